//! The bridge's tables and their migrations.

/// Migration steps; `MIGRATIONS[i]` takes the bridge's schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &["
CREATE TABLE conversations (
    conv       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,            -- 'dm' or 'group'
    name       TEXT NOT NULL,            -- the group's name; '' for a dm
    created_ms INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL          -- newest event's seq; seq is gap-free from 1
);
CREATE TABLE members (
    conv          TEXT NOT NULL,
    user          TEXT NOT NULL,
    role          TEXT NOT NULL,         -- 'admin' or 'member'
    joined_seq    INTEGER NOT NULL,      -- first seq the member may see
    left_seq      INTEGER,               -- last seq the member may see; NULL while a member
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conv, user)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user, conv);
CREATE TABLE events (
    conv    TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    kind    TEXT NOT NULL,               -- 'message' or 'member'
    sender  TEXT NOT NULL,               -- the author; for member events, who did it
    device  TEXT NOT NULL,
    req_id  TEXT,                        -- the sender's request id
    body    TEXT,                        -- message text
    action  TEXT,                        -- member events: created/added/removed/left
    target  TEXT,                        -- member events: who joined or went
    PRIMARY KEY (conv, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX events_by_request ON events (sender, req_id) WHERE req_id IS NOT NULL;
CREATE TABLE user_seqs (
    user      TEXT PRIMARY KEY,
    last_useq INTEGER NOT NULL           -- newest inbox event's useq; gap-free from 1
) WITHOUT ROWID;
CREATE TABLE inbox (
    user    TEXT NOT NULL,
    useq    INTEGER NOT NULL,
    conv    TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    rstatus TEXT,                        -- receipts: 'delivered'/'read'; NULL: the event (conv, seq)
    ruser   TEXT,                        -- receipts: whose receipt
    rts     INTEGER,                     -- receipts: when
    PRIMARY KEY (user, useq)
) WITHOUT ROWID;
CREATE INDEX inbox_by_event ON inbox (conv, seq) WHERE rstatus IS NULL;
", "
CREATE TABLE devices (
    user       TEXT NOT NULL,
    device     TEXT NOT NULL,
    online     INTEGER NOT NULL,
    changed_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device)
) WITHOUT ROWID;
CREATE INDEX devices_online ON devices (online) WHERE online = 1;
CREATE TABLE presence (
    user      TEXT PRIMARY KEY,
    online    INTEGER NOT NULL,          -- the aggregate last published on status/<user>
    last_seen INTEGER                    -- when the last device went offline
) WITHOUT ROWID;
", "
CREATE TABLE push_tokens (
    platform      TEXT NOT NULL,         -- 'apns' or 'fcm'
    token         TEXT NOT NULL,         -- belongs to one app install: one (user, device) at a time
    user          TEXT NOT NULL,
    device        TEXT NOT NULL,
    registered_ms INTEGER NOT NULL,      -- last push_register; a later 410 from APNs may not drop it
    PRIMARY KEY (platform, token)
) WITHOUT ROWID;
CREATE INDEX push_tokens_by_user ON push_tokens (user, device);
CREATE TABLE mutes (
    user  TEXT NOT NULL,
    conv  TEXT NOT NULL,
    until INTEGER,                       -- no pushes before this ts; NULL: for ever
    PRIMARY KEY (user, conv)
) WITHOUT ROWID;
", "
-- useq is now one past the user's newest inbox row: the counter was a second
-- B-tree write per inbox row, always equal to MAX(inbox.useq) for the user.
DROP TABLE user_seqs;
", "
-- A dm message keeps the useqs of its two inbox rows (users in id order), so a
-- repeated send is redelivered without an index over every inbox row: that
-- index cost two B-tree writes per 1-1 message and served only repeats.
ALTER TABLE events ADD COLUMN useq_lo INTEGER;
ALTER TABLE events ADD COLUMN useq_hi INTEGER;
UPDATE events SET
    useq_lo = (SELECT i.useq FROM inbox i WHERE i.conv = events.conv AND i.seq = events.seq
               AND i.rstatus IS NULL ORDER BY i.user LIMIT 1),
    useq_hi = (SELECT i.useq FROM inbox i WHERE i.conv = events.conv AND i.seq = events.seq
               AND i.rstatus IS NULL ORDER BY i.user DESC LIMIT 1)
WHERE conv LIKE 'dm:%';
DROP INDEX inbox_by_event;
CREATE INDEX inbox_by_group_event ON inbox (conv, seq) WHERE rstatus IS NULL AND conv LIKE 'g:%';
", "
-- A removed account leaves nothing a new account of the same name could take
-- over (see removal.rs): a 1-1 chat with a removed user is closed until both
-- users have a row in it again, and the removed user's request ids stop
-- reserving anything (kept apart only to show the events as they were).
ALTER TABLE conversations ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN retired_req_id TEXT;
-- Accounts removed before this version: the same clean-up, for every user
-- that no longer exists.
UPDATE conversations SET closed = 1
WHERE kind = 'dm' AND conv IN (SELECT conv FROM members WHERE user NOT IN (SELECT name FROM users));
DELETE FROM members WHERE user NOT IN (SELECT name FROM users);
DELETE FROM inbox WHERE user NOT IN (SELECT name FROM users);
DELETE FROM devices WHERE user NOT IN (SELECT name FROM users);
DELETE FROM presence WHERE user NOT IN (SELECT name FROM users);
DELETE FROM push_tokens WHERE user NOT IN (SELECT name FROM users);
DELETE FROM mutes WHERE user NOT IN (SELECT name FROM users);
UPDATE events SET retired_req_id = req_id, req_id = NULL
WHERE req_id IS NOT NULL AND sender NOT IN (SELECT name FROM users);
", "
-- Timeline actions (edit, delete, react) and search.
-- A message row holds its current state: `body` is the latest edit (NULL once
-- deleted: the text is erased, not hidden); edit, delete and reaction events are
-- rows of their own kind, `ref_seq` naming the message they act on.
ALTER TABLE events ADD COLUMN ref_seq INTEGER;   -- message: reply_to; edit/delete/reaction: target
ALTER TABLE events ADD COLUMN edited_ts INTEGER; -- message: ts of its latest edit
ALTER TABLE events ADD COLUMN deleted INTEGER;   -- message: 1 once deleted for everyone
ALTER TABLE events ADD COLUMN text_row INTEGER;  -- message: its row in message_text; NULL once deleted
-- A deletion erases the text of the message's edits too.
CREATE INDEX events_edits ON events (conv, ref_seq) WHERE kind = 'edit';
CREATE TABLE reactions (
    conv  TEXT NOT NULL,
    seq   INTEGER NOT NULL,                  -- the message
    user  TEXT NOT NULL,
    emoji TEXT NOT NULL,
    ts    INTEGER NOT NULL,                  -- when chosen: users are listed by user id
    PRIMARY KEY (conv, seq, user)
) WITHOUT ROWID;
-- Search: a contentless trigram index (it keeps no copy of the text, nor
-- positions or sizes: the search checks each candidate's text), whose rowid
-- is a message's row here; rows are numbered in storage order, so newest first is
-- rowid descending. Rows of deleted messages are removed from both (from the
-- index with its 'delete' command and the text, under secure-delete: no entry
-- of the text stays behind).
CREATE TABLE search_rows (
    row  INTEGER PRIMARY KEY,
    conv TEXT NOT NULL,
    seq  INTEGER NOT NULL
);
CREATE VIRTUAL TABLE message_text USING fts5(
    body, tokenize = 'trigram', content = '', columnsize = 0, detail = none
);
-- A deleted row leaves no trace in the index (not only a delete marker).
INSERT INTO message_text (message_text, rank) VALUES ('secure-delete', 1);
INSERT INTO search_rows (conv, seq)
    SELECT conv, seq FROM events WHERE kind = 'message' AND body IS NOT NULL ORDER BY ts, conv, seq;
CREATE INDEX search_rows_backfill ON search_rows (conv, seq);
UPDATE events SET text_row = (SELECT row FROM search_rows s WHERE s.conv = events.conv AND s.seq = events.seq)
WHERE kind = 'message';
DROP INDEX search_rows_backfill;
INSERT INTO message_text (rowid, body) SELECT text_row, body FROM events WHERE text_row IS NOT NULL;
", "
-- Files (POST /files). One row per upload, under a random id: the bytes are
-- `<storage.files_path>/<sha256>`, shared by every upload of the same bytes, so
-- the id a user holds says nothing about other users' uploads.
CREATE TABLE uploads (
    file       TEXT PRIMARY KEY,
    uploader   TEXT NOT NULL,
    sha256     TEXT NOT NULL,                -- hex; the name of the bytes on disk
    size       INTEGER NOT NULL,
    type       TEXT NOT NULL,                -- media type, as uploaded
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX uploads_by_sha ON uploads (sha256);
CREATE INDEX uploads_by_age ON uploads (created_ms);
-- Which messages carry which uploads: download permission, and a file goes with
-- the last message that carries it.
CREATE TABLE attachments (
    file TEXT NOT NULL,
    conv TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (file, conv, seq)
) WITHOUT ROWID;
CREATE INDEX attachments_by_message ON attachments (conv, seq);
-- message: its attachments as sent, JSON [{file,name,size,type}]; NULL once deleted.
ALTER TABLE events ADD COLUMN attachments TEXT;
", "
-- Blocks: `blocked` may not send in the 1-1 chat with `blocker`, nor see their
-- presence (the broker reads this table too: `messenger_accounts::is_blocked`).
CREATE TABLE blocks (
    blocker    TEXT NOT NULL,
    blocked    TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;
CREATE INDEX blocks_by_blocked ON blocks (blocked);
"];

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn dm_messages_stored_before_keep_their_useqs_and_groups_keep_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = messenger_accounts::open_sqlite(&dir.path().join("m.db")).unwrap();
        messenger_accounts::migrate(&mut conn).unwrap();
        let before = &MIGRATIONS[..4];
        messenger_accounts::schema::migrate(&mut conn, "bridge", before).unwrap();
        conn.execute_batch(
            "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body) VALUES
                ('dm:ann:bob', 1, 0, 'message', 'ann', 'p', 'r1', 'hi'),
                ('g:team', 1, 0, 'message', 'ann', 'p', 'r2', 'yo');
             INSERT INTO inbox (user, useq, conv, seq) VALUES
                ('bob', 3, 'dm:ann:bob', 1), ('ann', 7, 'dm:ann:bob', 1),
                ('ann', 8, 'g:team', 1), ('bob', 4, 'g:team', 1);
             INSERT INTO inbox (user, useq, conv, seq, rstatus, ruser, rts) VALUES
                ('ann', 9, 'dm:ann:bob', 1, 'read', 'bob', 5);",
        )
        .unwrap();

        messenger_accounts::schema::migrate(&mut conn, "bridge", MIGRATIONS).unwrap();
        let kept: (i64, i64) = conn
            .query_row(
                "SELECT useq_lo, useq_hi FROM events WHERE conv = 'dm:ann:bob'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            kept,
            (7, 3),
            "ann's useq, then bob's; the receipt row is not one"
        );
        let group: Option<i64> = conn
            .query_row(
                "SELECT useq_lo FROM events WHERE conv = 'g:team'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(group, None);
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT user, useq FROM inbox
                 WHERE conv = 'g:team' AND seq = 1 AND rstatus IS NULL AND conv LIKE 'g:%'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("inbox_by_group_event"), "{plan}");
    }

    #[test]
    fn messages_stored_before_search_existed_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = messenger_accounts::open_sqlite(&dir.path().join("m.db")).unwrap();
        messenger_accounts::migrate(&mut conn).unwrap();
        let search = MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE VIRTUAL TABLE message_text"))
            .unwrap();
        let before = &MIGRATIONS[..search];
        messenger_accounts::schema::migrate(&mut conn, "bridge", before).unwrap();
        conn.execute_batch(
            "INSERT INTO events (conv, seq, ts, kind, sender, device, req_id, body) VALUES
                ('dm:ann:bob', 1, 5, 'message', 'ann', 'p', 'r1', 'Hello there'),
                ('g:team', 1, 1, 'member', 'ann', 'p', 'r2', 'team'),
                ('g:team', 2, 7, 'message', 'ann', 'p', 'r3', '東京タワー');",
        )
        .unwrap();

        messenger_accounts::schema::migrate(&mut conn, "bridge", MIGRATIONS).unwrap();
        let hit = |q: &str| -> Vec<(String, i64)> {
            conn.prepare(
                "SELECT s.conv, s.seq FROM message_text t JOIN search_rows s ON s.row = t.rowid
                 WHERE message_text MATCH ?1 ORDER BY t.rowid",
            )
            .unwrap()
            .query_map([q], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        assert_eq!(hit("\"HEL\" \"llo\""), [("dm:ann:bob".to_owned(), 1)]);
        assert_eq!(hit("\"タワー\""), [("g:team".to_owned(), 2)]);
        assert!(hit("\"tea\"").is_empty(), "member events are not indexed");
        let rows: Vec<Option<i64>> = conn
            .prepare("SELECT text_row FROM events ORDER BY ts")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [None, Some(1), Some(2)], "numbered in storage order");
    }
}
