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
"];
