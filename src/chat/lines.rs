//! How the chat commands print events: one line each.

use messenger_client::{ClientEvent, Deletion, Edit, Member, Message, Reaction, Receipt};
use messenger_protocol::wire::{MemberAction, ReceiptStatus, Status};
use messenger_protocol::{ConvId, UserId};

/// One line for any event (`listen`).
pub(super) fn event_line(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Message(m) => message_line(m),
        ClientEvent::Receipt(r) => format!("[{}] {}: {}", r.conv, r.user, receipt_text(r)),
        ClientEvent::Member(m) => member_line(m),
        ClientEvent::Edit(e) => edit_line(e),
        ClientEvent::Delete(d) => delete_line(d),
        ClientEvent::Reaction(r) => reaction_line(r),
        ClientEvent::Typing { conv, user } => format!("[{conv}] {user} is typing…"),
        ClientEvent::Status(s) => status_line(s),
        ClientEvent::Connected => "(connected)".into(),
        ClientEvent::Disconnected => "(connection lost; reconnecting)".into(),
        ClientEvent::Refused(code) => format!("(signed out: {code})"),
    }
}

/// A message with its conversation, seq and time.
pub(super) fn message_line(m: &Message) -> String {
    format!(
        "[{} #{} {}] {}: {}",
        m.conv,
        m.seq,
        format_ts(m.ts),
        m.from,
        message_text(m)
    )
}

/// A message inside `chat`: time, sender ("you" for this user), text.
pub(super) fn chat_message_line(me: &UserId, m: &Message) -> String {
    let who = if m.from == *me {
        "you".to_owned()
    } else {
        m.from.to_string()
    };
    format!("{} {who}: {}", short_time(m.ts), message_text(m))
}

/// A message's text in its current state: what it replies to, `(edited)`,
/// `message deleted`, its reactions.
fn message_text(m: &Message) -> String {
    let mut text = String::new();
    if let Some(target) = m.reply_to {
        text.push_str(&format!("↪ #{target} "));
    }
    if m.deleted {
        text.push_str("(message deleted)");
    } else {
        text.push_str(&one_line(&m.body));
        if m.edited.is_some() {
            text.push_str(" (edited)");
        }
        for file in &m.attachments {
            if !text.is_empty() && !text.ends_with(' ') {
                text.push(' ');
            }
            text.push_str(&format!(
                "[\u{1f4ce} {} ({}, file {})]",
                one_line(&file.name),
                size_text(file.size),
                file.file
            ));
        }
    }
    if !m.reactions.is_empty() {
        let all: Vec<String> = m
            .reactions
            .iter()
            .map(|(emoji, users)| {
                let users: Vec<&str> = users.iter().map(UserId::as_str).collect();
                format!("{emoji} {}", users.join(", "))
            })
            .collect();
        text.push_str(&format!(" [{}]", all.join("; ")));
    }
    text
}

/// A size for people: bytes, KiB, MiB or GiB.
pub(super) fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An edit event.
pub(super) fn edit_line(e: &Edit) -> String {
    let what = match &e.body {
        Some(body) => format!("{} edited #{}: {}", e.from, e.target, one_line(body)),
        None => format!("{} edited #{} (message deleted since)", e.from, e.target),
    };
    format!("[{} #{} {}] {what}", e.conv, e.seq, format_ts(e.ts))
}

/// A deletion event.
pub(super) fn delete_line(d: &Deletion) -> String {
    format!(
        "[{} #{} {}] {} deleted #{}: message deleted",
        d.conv,
        d.seq,
        format_ts(d.ts),
        d.from,
        d.target
    )
}

/// A reaction event.
pub(super) fn reaction_line(r: &Reaction) -> String {
    let what = if r.emoji.is_empty() {
        format!("{} took back their reaction to #{}", r.from, r.target)
    } else {
        format!("{} reacted {} to #{}", r.from, r.emoji, r.target)
    };
    format!("[{} #{} {}] {what}", r.conv, r.seq, format_ts(r.ts))
}

/// A membership change.
pub(super) fn member_line(m: &Member) -> String {
    let what = match m.action {
        MemberAction::Created => format!("{} created the group {:?}", m.by, m.name),
        MemberAction::Left => format!("{} left", m.user),
        action => format!("{} {} {}", m.by, action.as_str(), m.user),
    };
    format!("[{} #{} {}] {what}", m.conv, m.seq, format_ts(m.ts))
}

/// "✓ delivered up to seq N" or "✓✓ read up to seq N".
fn receipt_text(r: &Receipt) -> String {
    match r.status {
        ReceiptStatus::Delivered => format!("✓ delivered up to seq {}", r.seq),
        ReceiptStatus::Read => format!("✓✓ read up to seq {}", r.seq),
    }
}

/// A receipt inside `chat`: the reader is named in groups only.
pub(super) fn chat_receipt_line(conv: &ConvId, r: &Receipt) -> String {
    match conv {
        ConvId::Direct(..) => receipt_text(r),
        ConvId::Group(_) => format!("{}: {}", r.user, receipt_text(r)),
    }
}

/// A user's presence.
fn status_line(s: &Status) -> String {
    match (s.online, s.last_seen) {
        (true, _) => format!("{} is online", s.user),
        (false, Some(ts)) => format!("{} is offline (last seen {})", s.user, format_ts(ts)),
        (false, None) => format!("{} is offline", s.user),
    }
}

/// Keeps an event on one line.
fn one_line(body: &str) -> String {
    body.replace("\r\n", " ⏎ ").replace('\n', " ⏎ ")
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a ts in ms since the Unix epoch.
pub(crate) fn format_ts(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `HH:MM` (UTC).
fn short_time(ms: u64) -> String {
    let rem = ms / 1000 % 86_400;
    format!("{:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(format_ts(0), "1970-01-01 00:00:00");
        assert_eq!(format_ts(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(short_time(1_700_000_000_999), "22:13");
    }

    #[test]
    fn event_lines() {
        let m = Message {
            conv: ConvId::parse("dm:alice:bob").unwrap(),
            seq: 3,
            ts: 0,
            from: UserId::parse("bob").unwrap(),
            device: "phone".into(),
            id: messenger_client::new_request_id(),
            body: "hi\nthere".into(),
            reply_to: None,
            attachments: Vec::new(),
            edited: None,
            deleted: false,
            reactions: Default::default(),
            useq: Some(9),
        };
        assert_eq!(
            event_line(&ClientEvent::Message(m.clone())),
            "[dm:alice:bob #3 1970-01-01 00:00:00] bob: hi ⏎ there"
        );
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(chat_message_line(&alice, &m), "00:00 bob: hi ⏎ there");
        let mut changed = m.clone();
        changed.reply_to = Some(2);
        changed.edited = Some(5);
        changed
            .reactions
            .insert("👍".into(), vec![alice.clone(), m.from.clone()]);
        assert_eq!(
            message_line(&changed),
            "[dm:alice:bob #3 1970-01-01 00:00:00] bob: ↪ #2 hi ⏎ there (edited) [👍 alice, bob]"
        );
        let mut with_file = m.clone();
        with_file.body.clear();
        with_file
            .attachments
            .push(messenger_protocol::wire::Attachment {
                file: messenger_protocol::FileId::parse("f00d").unwrap(),
                name: "trip.jpg".into(),
                size: 3 * 1024 * 1024 / 2,
                media_type: "image/jpeg".into(),
            });
        assert_eq!(
            chat_message_line(&alice, &with_file),
            "00:00 bob: [\u{1f4ce} trip.jpg (1.5 MiB, file f00d)]"
        );
        assert_eq!(size_text(999), "999 B");
        assert_eq!(size_text(2048), "2.0 KiB");
        changed.deleted = true;
        changed.body.clear();
        changed.reactions.clear();
        assert_eq!(
            chat_message_line(&alice, &changed),
            "00:00 bob: ↪ #2 (message deleted)"
        );
        let r = Receipt {
            conv: m.conv.clone(),
            user: m.from.clone(),
            seq: 3,
            status: ReceiptStatus::Delivered,
            ts: 0,
            useq: Some(10),
        };
        assert_eq!(chat_receipt_line(&m.conv, &r), "✓ delivered up to seq 3");
        let read = Receipt {
            status: ReceiptStatus::Read,
            ..r
        };
        assert_eq!(chat_receipt_line(&m.conv, &read), "✓✓ read up to seq 3");
    }
}
