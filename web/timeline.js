// The open conversation: history paged in, events in `seq` order, receipts
// for what is on screen, the typing line.

import { memberNode, messageNode, presenceText, statusNode, summary } from "./render.js";
import { $, HISTORY_PAGE, showError, state, TYPING_EVERY_MS, TYPING_SHOWN_MS } from "./state.js";
import { peerOf, renderConvList } from "./conversations.js";
import { setCompose } from "./compose.js";
import { showImage } from "./files.js";

export function convFromHash() {
  const h = decodeURIComponent(location.hash.slice(1));
  return /^(dm:[a-z0-9_-]+:[a-z0-9_-]+|g:[A-Za-z0-9_-]{1,64})$/.test(h) ? h : null;
}

window.addEventListener("hashchange", () => {
  const conv = convFromHash();
  if (conv && conv !== state.open) openConv(conv);
  if (!conv && state.open) closeConv();
});

export function openConv(conv) {
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

export function closeConv() {
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

export function renderHeader() {
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
export async function loadHistory(fresh) {
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

export function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

export function keyOf(ev) {
  return ev.type === "member" ? `member/${ev.seq}` : `${ev.from}/${ev.id}`;
}

export function statusOf(msg) {
  const key = `${msg.from}/${msg.id}`;
  if (state.failed.has(key)) return "failed";
  if (!msg.seq) return "pending";
  const marks = state.store.marks()[msg.conv] || {};
  if ((marks.read || 0) >= msg.seq) return "read";
  if ((marks.delivered || 0) >= msg.seq) return "delivered";
  return "sent";
}

export function nodeFor(ev) {
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
export function upsert(ev, scroll = true) {
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
export function changeMessage(ev) {
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

export function refreshStatuses() {
  for (const li of $("messages").querySelectorAll("li.msg.mine")) {
    const msg = state.timeline.get(li.dataset.key);
    if (!msg) continue;
    const old = li.querySelector(".status");
    const status = statusOf(msg);
    if (old && old.dataset.status !== status) old.replaceWith(statusNode(status, state.failed.get(li.dataset.key)));
  }
}

export function refreshQuotes() {
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
export function renderPending() {
  for (const entry of state.store.outbox()) {
    if (entry.conv === state.open) upsert({ type: "message", ...entry, from: state.session.user }, true);
  }
}

// ---------------------------------------------------------------- read receipts

export function seen(entries) {
  for (const entry of entries) {
    const seq = Number(entry.target.dataset.seq);
    if (entry.isIntersecting) state.onScreen.add(seq);
    else state.onScreen.delete(seq);
  }
  markVisibleRead();
}

/** Sends a `read` receipt for the newest message of others on screen, if the page is seen. */
export function markVisibleRead() {
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

export function typing(ev) {
  if (ev.conv !== state.open || ev.user === state.session.user) return;
  $("typing").textContent = `${ev.user} is typing…`;
  $("typing").dataset.user = ev.user;
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(stopTyping, TYPING_SHOWN_MS);
}

/** Hides the typing line (its time is up, or the typist's message came). */
export function stopTyping() {
  clearTimeout(state.typingTimer);
  $("typing").textContent = "";
  delete $("typing").dataset.user;
}

$("compose-text").addEventListener("input", () => {
  const now = Date.now();
  if (!state.open || !$("compose-text").value || now - state.lastTypingSent < TYPING_EVERY_MS) return;
  if (state.conn.notify({ type: "typing", conv: state.open }, 0)) state.lastTypingSent = now;
});
