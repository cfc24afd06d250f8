//! Batching of cumulative receipts.
//!
//! Receipts are cumulative ("everything up to `seq`"), so only the highest seq
//! per conversation and status matters: a burst of 100 messages in one
//! conversation costs one `delivered` receipt, sent when the burst is over.

use std::collections::BTreeMap;

use messenger_protocol::wire::ReceiptStatus;
use messenger_protocol::ConvId;

/// Receipts waiting to be published, and the highest ones already published.
#[derive(Debug, Default)]
pub(crate) struct Receipts {
    /// The highest seq to publish per (conversation, status); only values above `sent`.
    pending: BTreeMap<(ConvId, ReceiptStatus), u64>,
    /// The highest seq published per (conversation, status) by this client.
    sent: BTreeMap<(ConvId, ReceiptStatus), u64>,
}

impl Receipts {
    /// Notes that everything up to `seq` in `conv` reached `status`. Returns
    /// whether this adds anything to publish (`false` for a repeat or a regression,
    /// and for `delivered` at or below a `read` already published).
    pub(crate) fn note(&mut self, conv: &ConvId, status: ReceiptStatus, seq: u64) -> bool {
        let covered = |st: ReceiptStatus| {
            let key = (conv.clone(), st);
            self.sent
                .get(&key)
                .copied()
                .unwrap_or(0)
                .max(self.pending.get(&key).copied().unwrap_or(0))
        };
        let mut floor = covered(status);
        if status == ReceiptStatus::Delivered {
            // A read receipt says delivered too.
            floor = floor.max(covered(ReceiptStatus::Read));
        }
        if seq <= floor {
            return false;
        }
        self.pending.insert((conv.clone(), status), seq);
        true
    }

    /// Whether anything waits to be published.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes what waits, one receipt per (conversation, status), and counts it as published.
    pub(crate) fn take(&mut self) -> Vec<(ConvId, ReceiptStatus, u64)> {
        let pending = std::mem::take(&mut self.pending);
        pending
            .into_iter()
            .map(|((conv, status), seq)| {
                self.sent.insert((conv.clone(), status), seq);
                (conv, status, seq)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &str) -> ConvId {
        ConvId::parse(s).unwrap()
    }

    #[test]
    fn a_burst_costs_one_receipt_per_conversation() {
        let mut r = Receipts::default();
        let a = conv("dm:alice:bob");
        let g = conv("g:team");
        for seq in 1..=100 {
            assert!(r.note(&a, ReceiptStatus::Delivered, seq));
        }
        for seq in 1..=7 {
            r.note(&g, ReceiptStatus::Delivered, seq);
        }
        let batch = r.take();
        assert_eq!(
            batch,
            vec![
                (a.clone(), ReceiptStatus::Delivered, 100),
                (g, ReceiptStatus::Delivered, 7)
            ]
        );
        assert!(r.is_empty());
        // Repeats (a sync after a reconnect) publish nothing again.
        assert!(!r.note(&a, ReceiptStatus::Delivered, 100));
        assert!(!r.note(&a, ReceiptStatus::Delivered, 50));
        assert!(r.is_empty());
        assert!(r.note(&a, ReceiptStatus::Delivered, 101));
        assert_eq!(r.take(), vec![(a, ReceiptStatus::Delivered, 101)]);
    }

    #[test]
    fn out_of_order_notes_keep_the_highest() {
        let mut r = Receipts::default();
        let a = conv("dm:alice:bob");
        assert!(r.note(&a, ReceiptStatus::Delivered, 5));
        assert!(!r.note(&a, ReceiptStatus::Delivered, 3));
        assert_eq!(r.take(), vec![(a, ReceiptStatus::Delivered, 5)]);
    }

    #[test]
    fn read_covers_delivered_but_not_the_reverse() {
        let mut r = Receipts::default();
        let a = conv("dm:alice:bob");
        assert!(r.note(&a, ReceiptStatus::Delivered, 4));
        assert!(r.note(&a, ReceiptStatus::Read, 4));
        r.take();
        assert!(!r.note(&a, ReceiptStatus::Delivered, 4));
        assert!(r.note(&a, ReceiptStatus::Delivered, 5));
        assert!(r.note(&a, ReceiptStatus::Read, 5));
        let batch = r.take();
        assert_eq!(batch.len(), 2);
    }
}
