//! End-to-end tests.

// Push notifications: the real broker and bridge against fake APNs, FCM and OAuth servers.
mod push;
