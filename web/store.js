// What the page keeps in the browser (localStorage), per user: the device token
// (never the password), the device id, the inbox cursor, the sends not yet
// acknowledged and the other members' receipts. Sign-out forgets all of it.

const SESSION_KEY = "messenger.session";

/** A random hex string of `bytes` bytes. */
export function randomHex(bytes) {
  const buf = new Uint8Array(bytes);
  crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The saved session {user, device, token}, or null. */
export function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    if (s && typeof s.user === "string" && typeof s.device === "string" && typeof s.token === "string") {
      return s;
    }
  } catch (_) {
    // an unreadable entry is no session
  }
  return null;
}

/** Keeps the session (user id, device id, device token). */
export function saveSession(session) {
  localStorage.setItem(SESSION_KEY, JSON.stringify({
    user: session.user, device: session.device, token: session.token,
  }));
}

/** The device id of this browser: kept once made, until sign-out. */
export function deviceId() {
  const key = "messenger.device";
  let id = localStorage.getItem(key);
  if (!id || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
    id = "web-" + randomHex(8);
    localStorage.setItem(key, id);
  }
  return id;
}

/** Forgets the session, the device id and everything kept for `user`. */
export function forget(user) {
  localStorage.removeItem(SESSION_KEY);
  localStorage.removeItem("messenger.device");
  if (user) {
    for (const name of ["cursor", "outbox", "marks"]) {
      localStorage.removeItem(`messenger.${user}.${name}`);
    }
  }
}

/** Per-user state kept across reloads. */
export class UserStore {
  constructor(user) {
    this.user = user;
  }

  key(name) {
    return `messenger.${this.user}.${name}`;
  }

  read(name, fallback) {
    try {
      const v = JSON.parse(localStorage.getItem(this.key(name)) || "null");
      return v === null ? fallback : v;
    } catch (_) {
      return fallback;
    }
  }

  write(name, value) {
    localStorage.setItem(this.key(name), JSON.stringify(value));
  }

  /** The `useq` of the last inbox event applied. */
  get cursor() {
    const c = this.read("cursor", 0);
    return Number.isSafeInteger(c) && c >= 0 ? c : 0;
  }

  set cursor(useq) {
    this.write("cursor", useq);
  }

  /** Sends not yet acknowledged, oldest first: {id, conv, body, reply_to?, attachments?, created}. */
  outbox() {
    const list = this.read("outbox", []);
    return Array.isArray(list) ? list.filter((e) => e && typeof e.id === "string" && typeof e.conv === "string") : [];
  }

  /** Adds a send to the outbox. */
  enqueue(entry) {
    const list = this.outbox();
    list.push(entry);
    this.write("outbox", list);
  }

  /** Drops a send from the outbox (acknowledged, or refused for good). */
  dequeue(id) {
    this.write("outbox", this.outbox().filter((e) => e.id !== id));
  }

  /** The other members' receipts per conversation: {conv: {delivered, read}}. */
  marks() {
    const m = this.read("marks", {});
    return m && typeof m === "object" ? m : {};
  }

  /** Raises a receipt mark; returns whether it moved. */
  raiseMark(conv, status, seq) {
    const marks = this.marks();
    const m = marks[conv] || { delivered: 0, read: 0 };
    let moved = false;
    if (seq > (m[status] || 0)) {
      m[status] = seq;
      moved = true;
    }
    if (status === "read" && seq > (m.delivered || 0)) {
      m.delivered = seq;
      moved = true;
    }
    if (moved) {
      marks[conv] = m;
      this.write("marks", marks);
    }
    return moved;
  }
}
