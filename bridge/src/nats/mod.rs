//! The bridge on a NATS cluster (the `[nats]` table): the broker tier is
//! nats-server nodes with JetStream and an MQTT listener each.
//!
//! - [`keys`]: the issuer account key and the JWTs it signs.
//! - `callout`: answers the nodes' auth callout (sign-in, per-user permissions)
//!   and disconnects revoked users on every node.
//! - `intake`: requests from a JetStream durable consumer of the bridge's own
//!   on the nodes' MQTT stream, acknowledged after commit.

pub mod keys;

pub use keys::{Issuer, KeyError};
