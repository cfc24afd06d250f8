//! The bridge: the server daemon that stores, sequences and fans out messages.
//!
//! # Layout
//!
//! - [`config`]: the `[bridge]`, `[storage]` and `[limits]` settings.

pub mod config;
