//! End-to-end tests.

mod bench;
