//! The one integration-test binary: every end-to-end test, built on `util`'s fixtures.

// Fixtures: embedded brokers, MQTT clients, raw packets, the real binary, stock clients.
mod util;

// The embedded broker over TCP and WebSocket: sign-in, topic ACL, revocation, WebSocket front.
mod broker;

// Stock clients (mosquitto_pub, mosquitto_sub) against the embedded broker.
mod mosquitto;

// `messenger serve` as a process: start, sign-in, SIGTERM, bad configuration (exit 64).
mod serve;

// `messenger user ...` from the command line, alone and while `serve` runs.
mod users;
