//! The inbox cursor: which stored events to apply, which are repeats, when to sync.
//!
//! Every stored event in `chat/<user>/inbox` carries `useq`, the user's gap-free
//! inbox sequence number. The cursor is the last `useq` applied. A live event is
//! applied only when it is the next one (`cursor + 1`); older ones are repeats
//! (delivery is at least once); a newer one reveals a gap, which a `sync` from
//! the cursor fills. The out-of-order event is dropped: the sync returns it too.
//!
//! A sync page is authoritative: the server returns every event it has after
//! `after`, ascending, so an event in it is applied whenever it is newer than the
//! cursor, even if a `useq` is missing (a hole on the server cannot be filled).

/// What to do with a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The next event: apply it (the cursor has advanced).
    Apply,
    /// Already applied: drop it.
    Repeat,
    /// Events are missing before it: drop it and sync.
    Gap,
}

/// The cursor and the sync state of one device's inbox.
#[derive(Debug, Clone)]
pub(crate) struct Inbox {
    /// The last `useq` applied; 0 before the first event.
    cursor: u64,
    /// The highest `useq` seen live and dropped because of a gap; a sync that
    /// ends below it must be followed by another.
    highest_seen: u64,
    /// A sync is running (its pages are being requested).
    syncing: bool,
    /// The last sync failed; the next tick should start another.
    failed: bool,
}

impl Inbox {
    /// An inbox whose events up to `cursor` were applied before.
    pub(crate) fn new(cursor: u64) -> Self {
        Self {
            cursor,
            highest_seen: cursor,
            syncing: false,
            failed: false,
        }
    }

    /// The last `useq` applied.
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Judges a live event.
    pub(crate) fn live(&mut self, useq: u64) -> Verdict {
        if useq <= self.cursor {
            Verdict::Repeat
        } else if useq == self.cursor + 1 {
            self.cursor = useq;
            Verdict::Apply
        } else {
            self.highest_seen = self.highest_seen.max(useq);
            Verdict::Gap
        }
    }

    /// Starts a sync unless one is running; returns the `after` of its first page.
    pub(crate) fn start_sync(&mut self) -> Option<u64> {
        if self.syncing {
            return None;
        }
        self.syncing = true;
        self.failed = false;
        Some(self.cursor)
    }

    /// Starts a sync even if one was running (after a reconnect, when the old one's
    /// replies may be lost); returns the `after` of its first page.
    pub(crate) fn restart_sync(&mut self) -> u64 {
        self.syncing = true;
        self.failed = false;
        self.cursor
    }

    /// Judges an event of a sync page: `true` to apply it (the cursor has advanced).
    pub(crate) fn synced(&mut self, useq: u64) -> bool {
        if useq > self.cursor {
            self.cursor = useq;
            true
        } else {
            false
        }
    }

    /// The current sync's page requested with `after` was applied. Returns the
    /// `after` of the next page to request, or `None` when the sync is over.
    pub(crate) fn page_done(&mut self, after: u64, more: bool, next: u64) -> Option<u64> {
        if more {
            // Continue from what was applied; `next` only when the page moved nothing.
            if self.cursor > after {
                return Some(self.cursor);
            }
            if next > after {
                return Some(next);
            }
            tracing::warn!(after, next, "sync page made no progress; stopping");
        }
        self.syncing = false;
        if self.highest_seen > self.cursor {
            // Live events beyond what this sync returned were dropped: go again.
            self.syncing = true;
            return Some(self.cursor);
        }
        None
    }

    /// The current sync's request failed; a later [`Inbox::wants_sync`] says to retry.
    pub(crate) fn sync_failed(&mut self) {
        self.syncing = false;
        self.failed = true;
    }

    /// Whether a sync should start now: none is running, and the last one failed
    /// or a gap is still open.
    pub(crate) fn wants_sync(&self) -> bool {
        !self.syncing && (self.failed || self.highest_seen > self.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_events_advance_and_repeats_drop() {
        let mut inbox = Inbox::new(0);
        assert_eq!(inbox.live(1), Verdict::Apply);
        assert_eq!(inbox.live(2), Verdict::Apply);
        assert_eq!(inbox.live(2), Verdict::Repeat);
        assert_eq!(inbox.live(1), Verdict::Repeat);
        assert_eq!(inbox.cursor(), 2);
        assert!(!inbox.wants_sync());
    }

    #[test]
    fn starts_from_a_persisted_cursor() {
        let mut inbox = Inbox::new(41);
        assert_eq!(inbox.live(41), Verdict::Repeat);
        assert_eq!(inbox.live(42), Verdict::Apply);
    }

    #[test]
    fn a_gap_syncs_from_the_cursor_and_the_late_event_is_then_a_repeat() {
        let mut inbox = Inbox::new(3);
        assert_eq!(inbox.live(6), Verdict::Gap);
        assert_eq!(inbox.cursor(), 3);
        assert_eq!(inbox.start_sync(), Some(3));
        // A second gap while syncing starts nothing new.
        assert_eq!(inbox.live(7), Verdict::Gap);
        assert_eq!(inbox.start_sync(), None);
        // The sync returns 4..=7 in order.
        for u in 4..=7 {
            assert!(inbox.synced(u));
        }
        assert_eq!(inbox.page_done(3, false, 7), None);
        assert_eq!(inbox.cursor(), 7);
        // The live copies are repeats now.
        assert_eq!(inbox.live(6), Verdict::Repeat);
        assert_eq!(inbox.live(7), Verdict::Repeat);
        assert_eq!(inbox.live(8), Verdict::Apply);
        assert!(!inbox.wants_sync());
    }

    #[test]
    fn sync_pages_continue_from_the_cursor() {
        let mut inbox = Inbox::new(0);
        assert_eq!(inbox.restart_sync(), 0);
        assert!(inbox.synced(1));
        assert!(inbox.synced(2));
        assert_eq!(inbox.page_done(0, true, 2), Some(2));
        // A page of repeats only (a live event applied them meanwhile) still moves on.
        assert_eq!(inbox.live(3), Verdict::Apply);
        assert!(!inbox.synced(3));
        assert_eq!(inbox.page_done(2, true, 3), Some(3));
        assert!(inbox.synced(4));
        assert_eq!(inbox.page_done(3, false, 4), None);
        assert_eq!(inbox.cursor(), 4);
    }

    #[test]
    fn an_empty_page_with_more_uses_next_or_stops() {
        let mut inbox = Inbox::new(5);
        inbox.restart_sync();
        assert_eq!(inbox.page_done(5, true, 9), Some(9));
        assert_eq!(inbox.page_done(9, true, 9), None);
    }

    #[test]
    fn a_sync_ending_below_a_live_gap_goes_again() {
        let mut inbox = Inbox::new(0);
        assert_eq!(inbox.restart_sync(), 0);
        // Event 3 arrives live while the sync's snapshot only had 1.
        assert_eq!(inbox.live(3), Verdict::Gap);
        assert!(inbox.synced(1));
        assert_eq!(inbox.page_done(0, false, 1), Some(1));
        assert!(inbox.synced(2));
        assert!(inbox.synced(3));
        assert_eq!(inbox.page_done(1, false, 3), None);
        assert!(!inbox.wants_sync());
    }

    #[test]
    fn sync_pages_skip_server_holes() {
        let mut inbox = Inbox::new(1);
        inbox.restart_sync();
        assert!(inbox.synced(4));
        assert!(!inbox.synced(2));
        assert_eq!(inbox.cursor(), 4);
        assert_eq!(inbox.live(5), Verdict::Apply);
    }

    #[test]
    fn a_failed_sync_is_wanted_again() {
        let mut inbox = Inbox::new(0);
        assert_eq!(inbox.start_sync(), Some(0));
        assert!(!inbox.wants_sync());
        inbox.sync_failed();
        assert!(inbox.wants_sync());
        assert_eq!(inbox.start_sync(), Some(0));
        assert!(!inbox.wants_sync());
    }
}
