// The conversation list: names, last messages, unread counts, presence;
// new chats and groups; search.

import { convNode, el, summary } from "./render.js";
import { randomHex } from "./store.js";
import { $, showError, state, USER_ID } from "./state.js";
import { closeConv, openConv, renderHeader } from "./timeline.js";

export function peerOf(conv) {
  if (!conv.startsWith("dm:")) return null;
  const [, a, b] = conv.split(":");
  return a === state.session.user ? b : a;
}

export function dmWith(user) {
  const me = state.session.user;
  return me < user ? `dm:${me}:${user}` : `dm:${user}:${me}`;
}

export async function loadConversations() {
  const items = [];
  let cursor = null;
  for (let page = 0; page < 10; page++) {
    const reply = await state.conn.request({ type: "conversations", limit: 100, cursor });
    items.push(...(reply.items || []));
    if (!reply.more || !reply.next) break;
    cursor = reply.next;
  }
  const fresh = new Map();
  for (const item of items) {
    const old = state.convs.get(item.conv) || {};
    fresh.set(item.conv, {
      ...old, ...item, local: false,
      unread: state.open === item.conv ? 0 : item.unread,
    });
  }
  for (const [conv, c] of state.convs) {
    if (!fresh.has(conv) && c.local) fresh.set(conv, c);
  }
  state.convs = fresh;
  for (const c of fresh.values()) {
    const peer = peerOf(c.conv);
    if (peer) {
      state.conn.watch(peer);
      c.presence = state.statuses.get(peer);
    }
  }
  renderConvList();
  // The list shows each conversation's last message: fetch it where unknown.
  await Promise.all([...fresh.values()]
    .filter((c) => !c.local && c.lastSeqSeen !== c.last_seq)
    .map(async (c) => {
      try {
        const page = await state.conn.request({ type: "history", conv: c.conv, limit: 5 });
        const last = [...(page.events || [])].reverse().find((e) => e.type === "message" || e.type === "member");
        if (last) {
          c.lastText = summary(last);
          c.lastTs = last.ts;
        }
        c.lastSeqSeen = c.last_seq;
      } catch (_) {
        // the list stays without it
      }
    }));
  renderConvList();
  if (state.open) renderHeader();
}

export function renderConvList() {
  const list = $("conv-list");
  const convs = [...state.convs.values()].sort((a, b) =>
    (b.lastTs || 0) - (a.lastTs || 0) || (b.last_seq || 0) - (a.last_seq || 0) || a.conv.localeCompare(b.conv));
  // Rows that did not change stay the same nodes (focus and a click in progress survive).
  const rows = convs.map((c) => {
    const fresh = convNode(c, c.conv === state.open);
    const old = list.querySelector(`li[data-conv="${CSS.escape(c.conv)}"]`);
    return old && old.isEqualNode(fresh) ? old : fresh;
  });
  if (rows.length !== list.children.length || rows.some((row, i) => list.children[i] !== row)) {
    list.replaceChildren(...rows);
  }
  $("conv-empty").hidden = convs.length > 0;
  const unread = convs.reduce((n, c) => n + (c.unread || 0), 0);
  document.title = (unread ? `(${unread}) ` : "") + `Messenger · ${state.session.user}`;
}

$("conv-list").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-conv]");
  if (button) openConv(button.dataset.conv);
});

export function presence(status) {
  state.statuses.set(status.user, status);
  for (const c of state.convs.values()) {
    if (peerOf(c.conv) === status.user) c.presence = status;
  }
  renderConvList();
  if (state.open && peerOf(state.open) === status.user) renderHeader();
}

$("new-chat").addEventListener("submit", (e) => {
  e.preventDefault();
  const user = $("new-chat-user").value.trim().toLowerCase();
  $("sidebar-error").textContent = "";
  if (!USER_ID.test(user)) {
    $("sidebar-error").textContent = "Not a user id: 1 to 32 of a-z, 0-9, _ and -.";
    return;
  }
  if (user === state.session.user) {
    $("sidebar-error").textContent = "That is you: pick someone else.";
    return;
  }
  $("new-chat-user").value = "";
  const conv = dmWith(user);
  if (!state.convs.has(conv)) {
    state.convs.set(conv, { conv, name: user, members: [state.session.user, user], unread: 0, local: true, lastTs: Date.now() });
  }
  state.conn.watch(user);
  openConv(conv);
});

$("new-group").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("new-group-name").value.trim();
  const members = $("new-group-members").value.split(/[\s,]+/).map((s) => s.trim().toLowerCase()).filter(Boolean);
  $("sidebar-error").textContent = "";
  const bad = members.find((m) => !USER_ID.test(m));
  if (bad) {
    $("sidebar-error").textContent = `Not a user id: ${bad}`;
    return;
  }
  try {
    const ack = await state.conn.request({ type: "group_create", id: randomHex(16), name, members });
    $("new-group-name").value = "";
    $("new-group-members").value = "";
    $("new-group-box").open = false;
    await loadConversations();
    openConv(ack.conv);
  } catch (err) {
    showError("sidebar-error", err);
  }
});

$("add-member").addEventListener("submit", async (e) => {
  e.preventDefault();
  const user = $("add-member-user").value.trim().toLowerCase();
  if (!USER_ID.test(user)) {
    $("conv-error").textContent = "Not a user id.";
    return;
  }
  try {
    await state.conn.request({ type: "group_add", id: randomHex(16), conv: state.open, user });
    $("add-member-user").value = "";
    $("conv-error").textContent = "";
  } catch (err) {
    showError("conv-error", err);
  }
});

$("leave").addEventListener("click", async () => {
  if (!state.open || !confirm("Leave this group?")) return;
  try {
    await state.conn.request({ type: "group_leave", id: randomHex(16), conv: state.open });
    state.convs.delete(state.open);
    closeConv();
    await loadConversations();
  } catch (err) {
    showError("conv-error", err);
  }
});

// ---------------------------------------------------------------- search

$("search").addEventListener("submit", async (e) => {
  e.preventDefault();
  const query = $("search-query").value.trim();
  if (!query) return;
  try {
    const reply = await state.conn.request({ type: "search", query, limit: 50 });
    const list = $("search-results");
    list.replaceChildren(...(reply.results || []).map((m) => {
      const c = state.convs.get(m.conv);
      return el("li", {}, el("button", { type: "button", class: "conv-item", "data-conv": m.conv, "data-seq": m.seq },
        el("span", { class: "line" }, el("span", { class: "name", text: c ? c.name : m.conv })),
        el("span", { class: "line small-text" }, el("span", { class: "last", text: `${m.from}: ${summary(m)}` }))));
    }));
    if (!list.children.length) list.append(el("li", { class: "hint", text: "No messages match." }));
    $("search-results-box").hidden = false;
  } catch (err) {
    showError("sidebar-error", err);
  }
});

$("search-results").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-conv]");
  if (button) openConv(button.dataset.conv);
});

$("search-close").addEventListener("click", () => {
  $("search-results-box").hidden = true;
  $("search-query").value = "";
});
