//! The one integration-test binary: every end-to-end test, built on `util`'s fixtures.

// Fixtures: embedded brokers, MQTT clients, raw packets, the real binary, stock clients.
mod util;

// The embedded broker over TCP and WebSocket: sign-in, topic ACL, revocation, WebSocket front.
mod broker;

// Hostile clients against the embedded broker: WebSocket floods and subprotocols, password guessing, bad CONNECT flags.
mod hostile_broker;

// Stock clients (mosquitto_pub, mosquitto_sub) against the embedded broker.
mod mosquitto;

// `messenger serve` as a process: start, sign-in, SIGTERM, bad configuration (exit 64).
mod serve;

// TLS through the real binary: MQTT over TLS and WSS, untrusted clients, plain MQTT off,
// certificate reload on SIGHUP, bad certificate files (exit 64).
mod tls;

// The admin listener of the real binary: /healthz, /readyz per role, /metrics, a busy address (exit 64).
mod admin;

// `messenger user ...` from the command line, alone and while `serve` runs.
mod users;

// The operator's commands against `serve`: user list/disable/enable, admin sessions/kick, bad input.
mod operator;

// `messenger backup` under load and its restore; `messenger export` of one user's readable data.
mod backup;

// `storage.retention_days` on both engines: old messages removed after a restart, new ones and sends unaffected.
mod retention;

// The account store on SQLite and PostgreSQL from one test body; `storage.url` refusals.
mod accounts;

// `messenger migrate --to`: an install copied into PostgreSQL (a real server), bad targets refused.
mod migrate;

// `messenger user remove --erase`: the account goes and its messages' text is erased.
mod erase;

// Several bridges on one PostgreSQL database: guarantees under concurrency, a bridge killed mid-stream, retention shared.
mod bridges;

// The broker tier on a NATS cluster: `messenger nats-config` checked by nats-server,
// `messenger cluster up` (nodes, PostgreSQL, a killed node restarted, SIGTERM), bad input.
mod cluster;

// The service on a NATS cluster under failure: a node and a bridge killed mid-stream, and
// every ACL rule tried by a real client against a node.
mod nats;

// Durable 1-1 messaging through the real bridge, on the embedded broker and on Mosquitto.
mod messaging;

// Presence: last wills, status aggregation, half-open connections, restarts.
mod presence;

// Group chats: membership events, fan-out, admin rights, limits.
mod groups;

// Timeline actions and search: replies, edits, deletions, reactions, search windows.
mod timeline;

// Files: uploads and downloads on the web listener, attachments, limits, removal and the sweep.
mod files;

// Hostile input to the bridge: replies over the packet limit, unbounded lists,
// numbers out of range, device ids without end, a removed user's name re-used.
mod hostile;

// Abuse limits: per-user rates (rate_limited, retry_after_ms), devices per user,
// connections per address, the sign-in lockout, bad limit settings.
mod limits;

// Blocking: forbidden sends, refused and withheld presence, bad input, CLI, export, removal.
mod blocking;

// Push notifications to offline users through fake APNs, FCM and OAuth servers (HTTP/2, TLS).
mod push;

// The chat commands of the binary (send, history, status, group) against `messenger serve`.
mod cli;

// `messenger bench --quick`: the benchmark runs end to end (no timing assertions).
mod bench;

// The web client: its files and headers, and two people chatting in headless Chromium over WebDriver.
mod web;
