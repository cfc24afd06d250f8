// The web client: sign-in, the conversation list, one open conversation, the
// outbox of sends kept until acknowledged, and inbox events applied in `useq`
// order. The wire protocol is docs/PROTOCOL.md; MQTT is connection.js.

import { Connection, NoAnswer, RequestError, requestToken } from "./connection.js";
import {
  convNode, el, memberNode, messageNode, presenceText, statusNode, summary,
} from "./render.js";
import { UserStore, deviceId, forget, loadSession, randomHex, saveSession } from "./store.js";

const USER_ID = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const HISTORY_PAGE = 50;
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 5000;
const RETRY_EVERY_MS = 5000;

const $ = (id) => document.getElementById(id);

/** Everything the page knows while signed in. */
const state = {
  session: null,
  store: null,
  conn: null,
  convs: new Map(), // conv -> {conv, name, members, last_seq, unread, lastText, lastTs, presence, local}
  statuses: new Map(), // user -> status/<user> payload
  open: null, // the open conversation's id
  timeline: new Map(), // key -> message or member event of the open conversation
  bySeq: new Map(), // seq -> key, for the open conversation
  oldest: null, // the first seq of the loaded history
  more: false,
  loadingOlder: false,
  inFlight: new Set(), // outbox ids published and not yet answered
  failed: new Map(), // key -> why a send was refused
  syncing: false,
  syncAgain: false,
  delivered: new Map(), // conv -> delivered receipt sent
  readSent: new Map(), // conv -> read receipt sent
  onScreen: new Set(), // seqs of others' messages on screen
  lastTypingSent: 0,
  typingTimer: null,
  compose: null, // {mode: "reply" | "edit", seq}
  fileUrls: new Map(), // file -> blob URL
  observer: null,
  initialSync: false,
  pendingDelivered: new Map(), // conv -> delivered receipt to send after this batch
  listStale: false, // the conversation list needs asking again
};

// ---------------------------------------------------------------- sign-in

function showSignIn(message) {
  $("app-view").hidden = true;
  $("signin-view").hidden = false;
  $("signin-error").textContent = message || "";
  $("signin-user").focus();
}

$("signin").addEventListener("submit", async (e) => {
  e.preventDefault();
  const user = $("signin-user").value.trim();
  const password = $("signin-password").value;
  if (!USER_ID.test(user)) {
    $("signin-error").textContent = "A user id is 1 to 32 of a-z, 0-9, _ and -, starting with a letter or digit.";
    return;
  }
  $("signin-submit").disabled = true;
  $("signin-error").textContent = "Signing in…";
  try {
    const device = deviceId();
    const token = await requestToken(user, device, password);
    $("signin-password").value = "";
    const session = { user, device, token };
    saveSession(session);
    start(session);
  } catch (err) {
    $("signin-error").textContent = err.message;
  } finally {
    $("signin-submit").disabled = false;
  }
});

$("signout").addEventListener("click", async () => {
  const user = state.session && state.session.user;
  if (state.conn) await state.conn.stop();
  forget(user);
  location.hash = "";
  location.reload();
});

// ---------------------------------------------------------------- start

function start(session) {
  state.session = session;
  state.store = new UserStore(session.user);
  state.initialSync = state.store.cursor === 0;
  $("signin-view").hidden = true;
  $("app-view").hidden = false;
  $("me").textContent = session.user;
  document.title = `Messenger · ${session.user}`;
  if ("Notification" in window && Notification.permission === "default") $("notify").hidden = false;
  state.observer = new IntersectionObserver(seen, { root: $("messages"), threshold: 0.5 });
  const conn = new Connection(session);
  state.conn = conn;
  conn.addEventListener("state", (e) => showConnection(e.detail));
  conn.addEventListener("online", () => connected());
  conn.addEventListener("event", (e) => inboxEvent(e.detail));
  conn.addEventListener("status", (e) => presence(e.detail));
  conn.addEventListener("refused", () => {
    forget(session.user);
    showSignIn("Signed out: this browser's sign-in is no longer valid. Sign in again.");
  });
  conn.start();
  const fromHash = convFromHash();
  if (fromHash) openConv(fromHash);
  else renderConvList();
  setInterval(flushOutbox, RETRY_EVERY_MS);
}

function showConnection(s) {
  const node = $("conn");
  node.dataset.state = s;
  node.textContent = { connecting: "Connecting…", online: "Online", offline: "Offline, retrying…", syncing: "Syncing…" }[s] || s;
}

async function connected() {
  showConnection("syncing");
  try {
    await sync();
    await loadConversations();
    if (state.open) await loadHistory(true);
  } catch (err) {
    if (!(err instanceof NoAnswer)) showError("sidebar-error", err);
  }
  if (state.conn.online) showConnection("online");
  flushOutbox();
}

// ---------------------------------------------------------------- inbox

/** Applies inbox events in `useq` order; a gap (or a repeat) is left to `sync`. */
function inboxEvent(ev) {
  if (ev.type === "typing") {
    typing(ev);
    return;
  }
  if (!Number.isSafeInteger(ev.useq)) return;
  const cursor = state.store.cursor;
  if (ev.useq <= cursor) return;
  if (ev.useq === cursor + 1 && !state.syncing) {
    state.store.cursor = ev.useq;
    apply(ev, true);
    afterApply();
    return;
  }
  sync().catch(() => {});
}

/** Fetches every inbox event after the cursor, page by page. */
async function sync() {
  if (state.syncing) {
    state.syncAgain = true;
    return;
  }
  state.syncing = true;
  try {
    do {
      state.syncAgain = false;
      let more = true;
      while (more) {
        const after = state.store.cursor;
        const reply = await state.conn.request({ type: "sync", after, limit: 200 });
        for (const ev of reply.events || []) {
          if (Number.isSafeInteger(ev.useq) && ev.useq > state.store.cursor) {
            apply(ev, !state.initialSync);
            state.store.cursor = ev.useq;
          }
        }
        if (Number.isSafeInteger(reply.next) && reply.next > state.store.cursor) state.store.cursor = reply.next;
        more = reply.more === true && (reply.events || []).length > 0;
      }
    } while (state.syncAgain);
    state.initialSync = false;
  } finally {
    state.syncing = false;
  }
  afterApply();
}

/** One stored inbox event (`live`: news, not the first catch-up of a new browser). */
function apply(ev, live) {
  const me = state.session.user;
  const conv = ev.conv;
  if (typeof conv !== "string") return;
  const c = state.convs.get(conv);
  switch (ev.type) {
    case "message": {
      if (c) {
        c.lastText = summary(ev);
        c.lastTs = ev.ts;
        c.last_seq = Math.max(c.last_seq || 0, ev.seq);
        if (ev.from !== me && state.open !== conv) c.unread = (c.unread || 0) + 1;
      } else {
        state.listStale = true;
      }
      if (ev.from !== me) {
        if (ev.seq > (state.delivered.get(conv) || 0)) state.pendingDelivered.set(conv, ev.seq);
        if (live && document.hidden) notifyMessage(ev);
      } else {
        state.store.dequeue(ev.id);
      }
      if (state.open === conv) {
        upsert(ev);
        if (ev.from !== me && $("typing").dataset.user === ev.from) stopTyping();
      }
      break;
    }
    case "receipt": {
      if (ev.user !== me) {
        if (state.store.raiseMark(conv, ev.status, ev.seq) && state.open === conv) refreshStatuses();
      } else if (ev.status === "read" && c) {
        // read on another device of ours
        if (ev.seq >= (c.last_seq || 0)) c.unread = 0;
      }
      break;
    }
    case "member":
      state.listStale = true;
      if (c) {
        c.lastText = summary(ev);
        c.lastTs = ev.ts;
      }
      if (state.open === conv) upsert(ev);
      break;
    case "edit":
    case "delete":
    case "reaction":
      if (state.open === conv) changeMessage(ev);
      break;
    default:
      break;
  }
}

/** After a batch of events: delivered receipts, the list, a refresh if needed. */
function afterApply() {
  for (const [conv, seq] of state.pendingDelivered) {
    if (seq <= (state.delivered.get(conv) || 0)) {
      state.pendingDelivered.delete(conv);
    } else if (state.conn.notify({ type: "receipt", conv, seq, status: "delivered" }, 1)) {
      state.delivered.set(conv, seq);
      state.pendingDelivered.delete(conv);
    }
  }
  if (state.listStale) {
    state.listStale = false;
    loadConversations().catch(() => {});
  }
  renderConvList();
  markVisibleRead();
}

// ---------------------------------------------------------------- conversations

function peerOf(conv) {
  if (!conv.startsWith("dm:")) return null;
  const [, a, b] = conv.split(":");
  return a === state.session.user ? b : a;
}

function dmWith(user) {
  const me = state.session.user;
  return me < user ? `dm:${me}:${user}` : `dm:${user}:${me}`;
}

async function loadConversations() {
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

function renderConvList() {
  const list = $("conv-list");
  const convs = [...state.convs.values()].sort((a, b) =>
    (b.lastTs || 0) - (a.lastTs || 0) || (b.last_seq || 0) - (a.last_seq || 0) || a.conv.localeCompare(b.conv));
  list.replaceChildren(...convs.map((c) => convNode(c, c.conv === state.open)));
  $("conv-empty").hidden = convs.length > 0;
  const unread = convs.reduce((n, c) => n + (c.unread || 0), 0);
  document.title = (unread ? `(${unread}) ` : "") + `Messenger · ${state.session.user}`;
}

$("conv-list").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-conv]");
  if (button) openConv(button.dataset.conv);
});

function presence(status) {
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

// ---------------------------------------------------------------- the open conversation

function convFromHash() {
  const h = decodeURIComponent(location.hash.slice(1));
  return /^(dm:[a-z0-9_-]+:[a-z0-9_-]+|g:[A-Za-z0-9_-]{1,64})$/.test(h) ? h : null;
}

window.addEventListener("hashchange", () => {
  const conv = convFromHash();
  if (conv && conv !== state.open) openConv(conv);
  if (!conv && state.open) closeConv();
});

function openConv(conv) {
  if (!state.convs.has(conv)) {
    const peer = peerOf(conv);
    state.convs.set(conv, { conv, name: peer || conv, unread: 0, local: true });
    if (peer) state.conn.watch(peer);
  }
  if (location.hash.slice(1) !== encodeURIComponent(conv)) location.hash = encodeURIComponent(conv);
  const changed = state.open !== conv;
  state.open = conv;
  state.convs.get(conv).unread = 0;
  document.body.classList.add("conv-open");
  $("conv-placeholder").hidden = true;
  $("composer").hidden = false;
  $("conv-error").textContent = "";
  if (changed) {
    state.timeline.clear();
    state.bySeq.clear();
    state.onScreen.clear();
    state.oldest = null;
    state.more = false;
    state.observer.disconnect();
    $("messages").replaceChildren();
    stopTyping();
    setCompose(null);
  }
  renderHeader();
  renderConvList();
  renderPending();
  if (state.conn.online) loadHistory(true).catch((err) => showError("conv-error", err));
  $("compose-text").focus();
}

function closeConv() {
  state.open = null;
  document.body.classList.remove("conv-open");
  $("messages").replaceChildren();
  $("composer").hidden = true;
  $("conv-placeholder").hidden = false;
  $("conv-title").textContent = "Messenger";
  $("conv-sub").textContent = "";
  for (const n of document.querySelectorAll(".group-only")) n.hidden = true;
  if (location.hash) history.replaceState(null, "", location.pathname);
  renderConvList();
}

$("back").addEventListener("click", closeConv);

function renderHeader() {
  const c = state.convs.get(state.open);
  if (!c) return;
  const peer = peerOf(c.conv);
  $("conv-title").textContent = c.name || c.conv;
  $("conv-sub").textContent = peer
    ? presenceText(state.statuses.get(peer))
    : (c.members ? c.members.join(", ") + (c.member_count > c.members.length ? ` and ${c.member_count - c.members.length} more` : "") : "");
  for (const n of document.querySelectorAll(".group-only")) n.hidden = !!peer;
}

/** Loads the newest page (`fresh`) or the page before the oldest loaded. */
async function loadHistory(fresh) {
  const conv = state.open;
  const box = $("messages");
  const before = fresh ? undefined : state.oldest;
  if (!fresh && (!state.more || state.loadingOlder)) return;
  state.loadingOlder = true;
  try {
    const reply = await state.conn.request({ type: "history", conv, before, limit: HISTORY_PAGE });
    if (state.open !== conv) return;
    const all = reply.events || [];
    const events = all.filter((e) => e.type === "message" || e.type === "member");
    const height = box.scrollHeight;
    const atBottom = fresh || nearBottom();
    for (const ev of events) upsert(ev, false);
    const first = all.length ? all[0].seq : null;
    if (!fresh || state.oldest === null || first === null || first <= state.oldest) {
      // this page reaches furthest back: it says whether there is more
      if (first !== null) state.oldest = first;
      state.more = first !== null && reply.more === true;
    }
    refreshQuotes();
    if (atBottom && fresh) box.scrollTop = box.scrollHeight;
    else if (!fresh) box.scrollTop += box.scrollHeight - height;
  } finally {
    state.loadingOlder = false;
  }
  // Fill the view: a short page leaves nothing to scroll by.
  if (state.open === conv && state.more && box.scrollHeight <= box.clientHeight) await loadHistory(false);
  markVisibleRead();
}

$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 60 && state.more && !state.loadingOlder) {
    loadHistory(false).catch((err) => showError("conv-error", err));
  }
});

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function keyOf(ev) {
  return ev.type === "member" ? `member/${ev.seq}` : `${ev.from}/${ev.id}`;
}

function statusOf(msg) {
  const key = `${msg.from}/${msg.id}`;
  if (state.failed.has(key)) return "failed";
  if (!msg.seq) return "pending";
  const marks = state.store.marks()[msg.conv] || {};
  if ((marks.read || 0) >= msg.seq) return "read";
  if ((marks.delivered || 0) >= msg.seq) return "delivered";
  return "sent";
}

function nodeFor(ev) {
  if (ev.type === "member") return memberNode(ev);
  const quoted = ev.reply_to ? state.timeline.get(state.bySeq.get(ev.reply_to)) : null;
  const node = messageNode(ev, {
    me: state.session.user, status: statusOf(ev), why: state.failed.get(`${ev.from}/${ev.id}`),
    quoted,
  });
  for (const img of node.querySelectorAll("img[data-file]")) showImage(img);
  return node;
}

/** Inserts or replaces an event of the open conversation, in `seq` order (pending sends last). */
function upsert(ev, scroll = true) {
  const box = $("messages");
  const key = keyOf(ev);
  const old = state.timeline.get(key);
  if (old && old.seq && !ev.seq) return; // an outbox entry of an acknowledged send
  const stick = scroll && (nearBottom() || ev.from === state.session.user);
  state.timeline.set(key, ev);
  if (ev.seq) state.bySeq.set(ev.seq, key);
  const node = nodeFor(ev);
  const existing = box.querySelector(`li[data-key="${CSS.escape(key)}"]`);
  if (existing) state.observer.unobserve(existing);
  if (existing) existing.remove();
  let next = null;
  if (ev.seq) {
    for (const li of box.children) {
      const s = Number(li.dataset.seq);
      if (!li.dataset.seq || s > ev.seq) {
        next = li;
        break;
      }
    }
  }
  box.insertBefore(node, next);
  if (ev.type === "message" && ev.from !== state.session.user && ev.seq) state.observer.observe(node);
  if (stick) box.scrollTop = box.scrollHeight;
}

/** Applies a live edit, deletion or reaction to a loaded message. */
function changeMessage(ev) {
  const key = state.bySeq.get(ev.target);
  const msg = key && state.timeline.get(key);
  if (!msg) return;
  const changed = { ...msg };
  if (ev.type === "edit" && !msg.deleted) {
    changed.body = ev.body;
    changed.edited = ev.ts;
  } else if (ev.type === "delete") {
    changed.deleted = true;
    delete changed.body;
    delete changed.attachments;
  } else if (ev.type === "reaction") {
    const reactions = {};
    for (const [emoji, users] of Object.entries(msg.reactions || {})) {
      const rest = users.filter((u) => u !== ev.from);
      if (rest.length) reactions[emoji] = rest;
    }
    if (ev.emoji) reactions[ev.emoji] = [...(reactions[ev.emoji] || []), ev.from];
    changed.reactions = reactions;
  }
  upsert(changed, false);
  refreshQuotes();
}

function refreshStatuses() {
  for (const li of $("messages").querySelectorAll("li.msg.mine")) {
    const msg = state.timeline.get(li.dataset.key);
    if (!msg) continue;
    const old = li.querySelector(".status");
    const status = statusOf(msg);
    if (old && old.dataset.status !== status) old.replaceWith(statusNode(status, state.failed.get(li.dataset.key)));
  }
}

function refreshQuotes() {
  for (const li of $("messages").querySelectorAll("li.msg")) {
    const msg = state.timeline.get(li.dataset.key);
    if (msg && msg.reply_to && state.bySeq.has(msg.reply_to)) {
      const q = li.querySelector(".quote");
      const target = state.timeline.get(state.bySeq.get(msg.reply_to));
      if (q && target) q.textContent = `↪ ${target.from}: ${summary(target)}`;
    }
  }
}

/** Shows the outbox's sends of the open conversation as pending. */
function renderPending() {
  for (const entry of state.store.outbox()) {
    if (entry.conv === state.open) upsert({ type: "message", ...entry, from: state.session.user }, true);
  }
}

// ---------------------------------------------------------------- read receipts

function seen(entries) {
  for (const entry of entries) {
    const seq = Number(entry.target.dataset.seq);
    if (entry.isIntersecting) state.onScreen.add(seq);
    else state.onScreen.delete(seq);
  }
  markVisibleRead();
}

/** Sends a `read` receipt for the newest message of others on screen, if the page is seen. */
function markVisibleRead() {
  if (!state.open || document.visibilityState !== "visible" || !state.onScreen.size) return;
  const seq = Math.max(...state.onScreen);
  const conv = state.open;
  if (seq <= (state.readSent.get(conv) || 0)) return;
  if (state.conn.notify({ type: "receipt", conv, seq, status: "read" }, 1)) {
    state.readSent.set(conv, seq);
    if (seq > (state.delivered.get(conv) || 0)) state.delivered.set(conv, seq);
    const c = state.convs.get(conv);
    if (c) c.unread = 0;
    renderConvList();
  }
}

document.addEventListener("visibilitychange", markVisibleRead);

// ---------------------------------------------------------------- typing

function typing(ev) {
  if (ev.conv !== state.open || ev.user === state.session.user) return;
  $("typing").textContent = `${ev.user} is typing…`;
  $("typing").dataset.user = ev.user;
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(stopTyping, TYPING_SHOWN_MS);
}

/** Hides the typing line (its time is up, or the typist's message came). */
function stopTyping() {
  clearTimeout(state.typingTimer);
  $("typing").textContent = "";
  delete $("typing").dataset.user;
}

$("compose-text").addEventListener("input", () => {
  const now = Date.now();
  if (!state.open || !$("compose-text").value || now - state.lastTypingSent < TYPING_EVERY_MS) return;
  if (state.conn.notify({ type: "typing", conv: state.open }, 0)) state.lastTypingSent = now;
});

// ---------------------------------------------------------------- sending

$("compose-text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  } else if (e.key === "Escape" && state.compose) {
    setCompose(null);
  }
});

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = $("compose-text").value;
  if (!state.open || !body.trim()) return;
  const compose = state.compose;
  $("compose-text").value = "";
  state.lastTypingSent = 0; // the next keystroke is news again
  setCompose(null);
  if (compose && compose.mode === "edit") {
    act({ type: "edit", conv: state.open, target: compose.seq, body });
    return;
  }
  queueSend({ body, reply_to: compose && compose.mode === "reply" ? compose.seq : undefined });
});

/** Puts a send in the outbox, shows it pending, and publishes it if online. */
function queueSend({ body, reply_to, attachments }) {
  const entry = { id: randomHex(16), conv: state.open, body, created: Date.now() };
  if (reply_to) entry.reply_to = reply_to;
  if (attachments) entry.attachments = attachments;
  state.store.enqueue(entry);
  upsert({ type: "message", ...entry, from: state.session.user });
  flushOutbox();
}

/** Publishes every outbox entry not in flight, with its own id, until acknowledged. */
function flushOutbox() {
  if (!state.conn || !state.conn.online) return;
  for (const entry of state.store.outbox()) {
    if (state.inFlight.has(entry.id)) continue;
    state.inFlight.add(entry.id);
    const request = { type: "send", id: entry.id, conv: entry.conv, body: entry.body };
    if (entry.reply_to) request.reply_to = entry.reply_to;
    if (entry.attachments) request.attachments = entry.attachments;
    state.conn.request(request).then((ack) => {
      state.store.dequeue(entry.id);
      const key = `${state.session.user}/${entry.id}`;
      const shown = state.timeline.get(key);
      if (shown && !shown.seq && entry.conv === state.open) {
        upsert({ ...shown, seq: ack.seq, ts: ack.ts, pending: false }, false);
      }
    }, (err) => {
      if (err instanceof RequestError && err.code !== "rate_limited" && err.code !== "internal") {
        // refused for good: keep it on screen, say why, stop retrying
        state.store.dequeue(entry.id);
        const key = `${state.session.user}/${entry.id}`;
        state.failed.set(key, err.message);
        const shown = state.timeline.get(key);
        if (shown) upsert(shown, false);
      }
    }).finally(() => state.inFlight.delete(entry.id));
  }
}

/** A timeline action (edit, delete, react) with a fresh id. */
async function act(request) {
  try {
    await state.conn.request({ ...request, id: randomHex(16) });
    $("conv-error").textContent = "";
  } catch (err) {
    showError("conv-error", err);
  }
}

function setCompose(compose) {
  state.compose = compose;
  $("compose-context").hidden = !compose;
  if (!compose) {
    $("compose-context-text").textContent = "";
    return;
  }
  const msg = state.timeline.get(state.bySeq.get(compose.seq));
  $("compose-context-text").textContent = (compose.mode === "edit" ? "Editing: " : `Replying to ${msg ? msg.from : ""}: `) + summary(msg);
  if (compose.mode === "edit" && msg) $("compose-text").value = msg.body || "";
  $("compose-text").focus();
}

$("compose-cancel").addEventListener("click", () => setCompose(null));

$("messages").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-action]");
  if (!button) return;
  const li = button.closest("li.msg");
  const msg = li && state.timeline.get(li.dataset.key);
  const action = button.dataset.action;
  if (action === "download") {
    download(button.dataset.file, button.dataset.name);
    return;
  }
  if (action === "goto") {
    const key = state.bySeq.get(Number(button.dataset.target));
    const target = key && $("messages").querySelector(`li[data-key="${CSS.escape(key)}"]`);
    if (target) target.scrollIntoView({ block: "center" });
    return;
  }
  if (!msg || !msg.seq) return;
  if (action === "menu") {
    const actions = li.querySelector(".actions");
    actions.hidden = !actions.hidden;
    button.setAttribute("aria-expanded", String(!actions.hidden));
    if (!actions.hidden) actions.querySelector("button").focus();
  } else if (action === "reply") {
    setCompose({ mode: "reply", seq: msg.seq });
  } else if (action === "edit") {
    setCompose({ mode: "edit", seq: msg.seq });
  } else if (action === "delete") {
    if (confirm("Delete this message for everyone?")) act({ type: "delete", conv: msg.conv, target: msg.seq });
  } else if (action === "react") {
    const emoji = button.dataset.emoji;
    const mine = ((msg.reactions || {})[emoji] || []).includes(state.session.user);
    act({ type: "react", conv: msg.conv, target: msg.seq, emoji: mine ? "" : emoji });
  }
});

// ---------------------------------------------------------------- files

$("attach").addEventListener("change", async () => {
  const files = [...$("attach").files];
  $("attach").value = "";
  if (!files.length || !state.open) return;
  const attachments = [];
  try {
    for (const file of files) {
      const uploaded = await upload(file);
      attachments.push({ file: uploaded.file, name: file.name.slice(0, 255) || "file" });
    }
  } catch (err) {
    $("conv-error").textContent = `Upload failed: ${err.message}`;
    return;
  } finally {
    $("upload").hidden = true;
  }
  const body = $("compose-text").value;
  $("compose-text").value = "";
  queueSend({ body, attachments });
});

/** `POST /files` with the device token, showing progress; resolves to {file, size, type, sha256}. */
function upload(file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/files");
    xhr.setRequestHeader("Authorization", `Bearer ${state.session.token}`);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    $("upload").hidden = false;
    $("upload-label").textContent = `Uploading ${file.name}`;
    $("upload-progress").value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) $("upload-progress").value = Math.round((100 * e.loaded) / e.total);
    };
    xhr.onload = () => {
      if (xhr.status === 201) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch (_) {
          reject(new Error("unreadable answer"));
        }
      } else if (xhr.status === 413) reject(new Error("the file is too large"));
      else reject(new Error(`the server answered ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error("cannot reach the server"));
    xhr.send(file);
  });
}

/** A blob: URL for a file, fetched once with the device token. */
async function fileUrl(file) {
  if (state.fileUrls.has(file)) return state.fileUrls.get(file);
  const response = await fetch(`/files/${encodeURIComponent(file)}`, {
    headers: { Authorization: `Bearer ${state.session.token}` },
  });
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  state.fileUrls.set(file, url);
  return url;
}

function showImage(img) {
  fileUrl(img.dataset.file).then((url) => {
    img.src = url;
    img.hidden = false;
  }, () => {});
}

async function download(file, name) {
  try {
    const a = el("a", { href: await fileUrl(file), download: name || "file" });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) {
    $("conv-error").textContent = `Download failed: ${err.message}`;
  }
}

// ---------------------------------------------------------------- notifications

$("notify").addEventListener("click", async () => {
  await Notification.requestPermission();
  $("notify").hidden = Notification.permission !== "default";
});

function notifyMessage(ev) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const c = state.convs.get(ev.conv);
  const title = c && !peerOf(ev.conv) ? `${ev.from} in ${c.name}` : ev.from;
  const n = new Notification(title, { body: summary(ev), tag: ev.conv });
  n.onclick = () => {
    window.focus();
    openConv(ev.conv);
    n.close();
  };
}

// ---------------------------------------------------------------- errors

function showError(id, err) {
  const text = err instanceof NoAnswer ? "Offline: try again when connected." : err.message || String(err);
  $(id).textContent = text;
}

// ---------------------------------------------------------------- boot

const saved = loadSession();
if (saved) start(saved);
else showSignIn();
