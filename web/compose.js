// Sending: the composer, the outbox retried with each send's own `id` until
// acknowledged, replies, edits, deletions and reactions.

import { RequestError } from "./connection.js";
import { summary } from "./render.js";
import { randomHex } from "./store.js";
import { $, showError, state } from "./state.js";
import { upsert } from "./timeline.js";
import { download } from "./files.js";

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
export function queueSend({ body, reply_to, attachments }) {
  const entry = { id: randomHex(16), conv: state.open, body, created: Date.now() };
  if (reply_to) entry.reply_to = reply_to;
  if (attachments) entry.attachments = attachments;
  state.store.enqueue(entry);
  upsert({ type: "message", ...entry, from: state.session.user });
  flushOutbox();
}

/** Publishes every outbox entry not in flight, with its own id, until acknowledged. */
export function flushOutbox() {
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
export async function act(request) {
  try {
    await state.conn.request({ ...request, id: randomHex(16) });
    $("conv-error").textContent = "";
  } catch (err) {
    showError("conv-error", err);
  }
}

export function setCompose(compose) {
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
