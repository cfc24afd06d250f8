// Inbox events applied in `useq` order; a gap or a reconnect runs `sync` from the cursor.

import { summary } from "./render.js";
import { $, state } from "./state.js";
import { loadConversations, peerOf, renderConvList } from "./conversations.js";
import { changeMessage, markVisibleRead, openConv, refreshStatuses, stopTyping, typing, upsert } from "./timeline.js";

/** Applies inbox events in `useq` order; a gap (or a repeat) is left to `sync`. */
export function inboxEvent(ev) {
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
export async function sync() {
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
export function apply(ev, live) {
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
export function afterApply() {
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

// ---------------------------------------------------------------- notifications

$("notify").addEventListener("click", async () => {
  await Notification.requestPermission();
  $("notify").hidden = Notification.permission !== "default";
});

export function notifyMessage(ev) {
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
