//! Live connections per user, so that revoking an account cuts its connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A registry of every signed-in user's live connections.
#[derive(Default)]
pub(crate) struct Sessions {
    by_user: Mutex<HashMap<String, Vec<Weak<AtomicBool>>>>,
}

impl Sessions {
    /// Records a connection; `revoked` is set when the user is revoked.
    pub(crate) fn register(&self, user: &str, revoked: &Arc<AtomicBool>) {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(user.to_owned()).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(revoked));
    }

    /// Marks every live connection of `user` revoked; returns how many there were.
    pub(crate) fn revoke(&self, user: &str) -> usize {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.remove(user) else {
            return 0;
        };
        list.iter()
            .filter_map(Weak::upgrade)
            .map(|flag| flag.store(true, Ordering::Release))
            .count()
    }
}
