//! The messenger wire contract, shared by the broker, the bridge and the client.
//!
//! # Layout
//!
//! - [`ids`]: validated identifiers ([`UserId`], [`DeviceId`], [`ConvId`], [`ClientId`]).
//! - [`topics`]: building and parsing the MQTT topics of the protocol.
//! - [`acl`]: who may publish or subscribe where; the one source of truth for
//!   the embedded broker and for the ACL file generated for standard brokers.
//! - [`wire`]: the JSON requests, replies and events.
//! - [`config`]: the error every crate's settings use for a bad value.

pub mod acl;
pub mod config;
pub mod ids;
pub mod topics;
pub mod wire;

pub use ids::{ClientId, ConvId, DeviceId, FileId, GroupId, IdError, UserId};
