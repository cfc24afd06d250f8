// The MQTT connection to the server (MQTT.js over WebSocket, the protocol's
// topics): sign-in for a device token, requests with replies, the inbox, and
// presence. Emits "state" (connecting | online | offline), "online" (after each
// (re)connect, once subscribed), "event" (an inbox event), "status" (a user's
// aggregated presence) and "refused" (the server refused the token: CONNACK 4; a
// CONNACK 5, too many of the user's devices connected, is a state, "limited").

import { randomHex } from "./store.js";

/** The WebSocket URL of the server that served this page. */
export function brokerUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/mqtt`;
}

/** An error the server answered a request with (`code`, `message`). */
export class RequestError extends Error {
  constructor(reply) {
    super(reply.message || reply.code || "request failed");
    this.code = reply.code || "internal";
    this.retryAfterMs = reply.retry_after_ms;
  }
}

/** A request that got no answer: offline, or no reply in time; safe to repeat with the same id. */
export class NoAnswer extends Error {}

const decoder = new TextDecoder();

function parse(payload) {
  try {
    const v = JSON.parse(decoder.decode(payload));
    return v && typeof v === "object" ? v : null;
  } catch (_) {
    return null;
  }
}

function options(user, device, secret, reconnectMs) {
  return {
    clientId: `${user}:${device}`,
    username: user,
    password: secret,
    protocolVersion: 4,
    // A clean session on every connect: the page syncs from its cursor each time, so it
    // needs no queue in the broker, and the broker keeps no session for a tab that may
    // not come back. It subscribes again on every connect and gets the retained
    // `status/<user>` messages then (a resumed session would get them too).
    clean: true,
    keepalive: 30,
    reconnectPeriod: reconnectMs,
    connectTimeout: 10000,
    resubscribe: false,
    queueQoSZero: false,
    will: { topic: `presence/${user}/${device}`, payload: "offline", qos: 1, retain: true },
  };
}

/**
 * Signs in once with the password and asks for a device token (`token`
 * request); the password connection is closed again. Resolves to the token.
 */
export function requestToken(user, device, password) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(brokerUrl(), options(user, device, password, 0));
    const id = "token-" + randomHex(8);
    const dev = `chat/${user}/dev/${device}`;
    let done = false;
    const finish = (err, token) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      client.end(true);
      if (err) reject(err); else resolve(token);
    };
    const timer = setTimeout(() => finish(new Error("the server did not answer in time")), 15000);
    client.on("error", (err) => {
      if (err && err.code === 4) finish(new Error("wrong user id or password"));
      else if (err && err.code === 5) {
        finish(new Error("not allowed now: too many of your devices are connected (sign one out), or this account may not sign in here"));
      }
      else if (err && err.code === 2) finish(new Error("this device id was refused"));
      else if (err && err.code === 3) finish(new Error("the server cannot sign anyone in right now"));
      else finish(new Error("cannot reach the server"));
    });
    client.on("close", () => finish(new Error("cannot reach the server")));
    client.on("message", (topic, payload) => {
      const reply = parse(payload);
      if (topic !== dev || !reply || reply.id !== id) return;
      if (reply.type === "token" && typeof reply.token === "string") finish(null, reply.token);
      else finish(new RequestError(reply));
    });
    client.on("connect", () => {
      client.subscribe(dev, { qos: 1 }, (err) => {
        if (err) return finish(new Error("cannot subscribe to replies"));
        client.publish(`chat/${user}/out/${device}`, JSON.stringify({ type: "token", id }), { qos: 1 });
      });
    });
  });
}

/** How long the page waits after a CONNACK 5 (not authorized now) before trying again. */
const LIMITED_RETRY_MS = 15000;

/** The long-lived connection of a signed-in device (its token as password). */
export class Connection extends EventTarget {
  constructor(session) {
    super();
    this.user = session.user;
    this.device = session.device;
    this.token = session.token;
    this.out = `chat/${this.user}/out/${this.device}`;
    this.inbox = `chat/${this.user}/inbox`;
    this.dev = `chat/${this.user}/dev/${this.device}`;
    this.waiting = new Map();
    this.watched = new Set();
    this.online = false;
    this.limited = false;
    this.client = null;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Connects, and keeps reconnecting every second while the server is away. */
  start() {
    this.emit("state", "connecting");
    const client = mqtt.connect(brokerUrl(), options(this.user, this.device, this.token, 1000));
    this.client = client;
    client.on("connect", () => this.subscribed());
    client.on("message", (topic, payload) => this.message(topic, payload));
    client.on("error", (err) => {
      if (err && err.code === 4) {
        // The token is no longer valid (password changed, account disabled or removed).
        client.end(true);
        this.emit("refused", err);
      } else if (err && err.code === 5) {
        // Not now: most likely too many of the user's devices are connected
        // (limits.max_devices). Keep the session and the outbox; try again later.
        this.limited = true;
        client.end(true);
        this.emit("state", "limited");
        setTimeout(() => {
          if (this.client !== client) return;
          this.limited = false;
          this.start();
        }, LIMITED_RETRY_MS);
      }
    });
    const down = () => {
      if (this.client !== client) return;
      this.online = false;
      for (const [, w] of this.waiting) w.reject(new NoAnswer("connection lost"));
      this.waiting.clear();
      this.emit("state", this.limited ? "limited" : "offline");
    };
    client.on("close", down);
    client.on("offline", down);
    client.on("reconnect", () => this.emit("state", "connecting"));
  }

  subscribed() {
    const topics = [this.inbox, this.dev];
    const statuses = [...this.watched].map((u) => `status/${u}`);
    this.client.subscribe(topics, { qos: 1 }, (err) => {
      if (err) {
        this.emit("state", "offline");
        return;
      }
      if (statuses.length) this.client.subscribe(statuses, { qos: 1 });
      this.client.publish(`presence/${this.user}/${this.device}`, "online", { qos: 1, retain: true });
      this.online = true;
      this.emit("state", "online");
      this.emit("online");
    });
  }

  message(topic, payload) {
    if (topic.startsWith("status/")) {
      const status = parse(payload);
      if (status && typeof status.user === "string") this.emit("status", status);
      return;
    }
    const msg = parse(payload);
    if (!msg) return;
    if (topic === this.dev) {
      const w = this.waiting.get(msg.id);
      if (!w) return;
      this.waiting.delete(msg.id);
      if (msg.type === "error") w.reject(new RequestError(msg));
      else w.resolve(msg);
    } else if (topic === this.inbox) {
      this.emit("event", msg);
    }
  }

  /** Publishes a request that has an `id` and resolves to its reply. */
  request(payload, timeoutMs = 10000) {
    if (!this.online) return Promise.reject(new NoAnswer("offline"));
    const id = payload.id || randomHex(16);
    const body = { ...payload, id };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new NoAnswer("no reply in time"));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.client.publish(this.out, JSON.stringify(body), { qos: 1 });
    });
  }

  /** Publishes a request that gets no reply (`receipt` at QoS 1, `typing` at QoS 0). */
  notify(payload, qos) {
    if (!this.online) return false;
    this.client.publish(this.out, JSON.stringify(payload), { qos });
    return true;
  }

  /** Follows `status/<user>` (kept across reconnects). */
  watch(user) {
    if (this.watched.has(user) || user === this.user) return;
    this.watched.add(user);
    if (this.online) this.client.subscribe(`status/${user}`, { qos: 1 });
  }

  /** Says goodbye (offline presence) and closes for good. */
  stop() {
    const client = this.client;
    this.client = null;
    this.online = false;
    if (!client) return Promise.resolve();
    return new Promise((resolve) => {
      const close = () => client.end(false, {}, () => resolve());
      if (client.connected) {
        client.publish(`presence/${this.user}/${this.device}`, "offline", { qos: 1, retain: true }, close);
      } else {
        client.end(true, {}, () => resolve());
      }
    });
  }
}
