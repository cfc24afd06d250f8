// What the page knows while signed in, shared by its modules, and a few helpers.

import { NoAnswer } from "./connection.js";

export const USER_ID = /^[a-z0-9][a-z0-9_-]{0,31}$/;
export const HISTORY_PAGE = 50;
export const TYPING_EVERY_MS = 3000;
export const TYPING_SHOWN_MS = 5000;
export const RETRY_EVERY_MS = 5000;

export const $ = (id) => document.getElementById(id);

/** Everything the page knows while signed in. */
export const state = {
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

// ---------------------------------------------------------------- errors

export function showError(id, err) {
  const text = err instanceof NoAnswer ? "Offline: try again when connected." : err.message || String(err);
  $(id).textContent = text;
}
