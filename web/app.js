// The web client: sign-in, start, notifications. The wire protocol is
// docs/PROTOCOL.md; MQTT is connection.js; each part of the page is its own module.

import { Connection, NoAnswer, requestToken } from "./connection.js";

import { deviceId, forget, loadSession, saveSession, UserStore } from "./store.js";
import { $, RETRY_EVERY_MS, showError, state, USER_ID } from "./state.js";
import { inboxEvent, sync } from "./inbox.js";
import { loadConversations, presence, renderConvList } from "./conversations.js";
import { convFromHash, loadHistory, openConv, seen } from "./timeline.js";
import { flushOutbox } from "./compose.js";

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
  node.textContent = { connecting: "Connecting…", online: "Online", offline: "Offline, retrying…", syncing: "Syncing…", limited: "Too many of your devices are connected; retrying soon…" }[s] || s;
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

// ---------------------------------------------------------------- boot

const saved = loadSession();
if (saved) start(saved);
else showSignIn();
