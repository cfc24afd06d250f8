//! Live connections per user, so that revoking an account cuts its connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A registry of every signed-in user's live connections.
#[derive(Default)]
pub(crate) struct Sessions {
    by_user: Mutex<HashMap<String, Vec<Weak<AtomicBool>>>>,
    /// client id -> number of open connections with it (briefly 2 while one replaces another).
    live: Mutex<HashMap<String, usize>>,
}

/// Counts a connection as live until dropped (when rumqttd drops the connection's codec).
pub(crate) struct LiveGuard {
    sessions: Arc<Sessions>,
    client_id: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut live = self.sessions.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(&self.client_id) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.client_id);
            }
        }
    }
}

impl Sessions {
    /// Records a connection; `revoked` is set when the user is revoked.
    pub(crate) fn register(&self, user: &str, revoked: &Arc<AtomicBool>) {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(user.to_owned()).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(revoked));
    }

    /// Counts a signed-in connection as live for as long as the guard lives.
    pub(crate) fn live(self: &Arc<Self>, client_id: &str) -> LiveGuard {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        *live.entry(client_id.to_owned()).or_insert(0) += 1;
        LiveGuard {
            sessions: self.clone(),
            client_id: client_id.to_owned(),
        }
    }

    /// Whether a connection with this client id is open.
    pub(crate) fn is_connected(&self, client_id: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(client_id)
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
