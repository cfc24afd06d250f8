//! The PostgreSQL schema (accounts and conversations in one database) and its
//! migrations.
//!
//! Every table is keyed so that a sharded PostgreSQL (Citus) can distribute it by
//! conversation or by user: its distribution key (below, and in docs/SCALING.md)
//! leads its primary key, and a lookup by another key has a table of its own,
//! written in the same transaction (`memberships` beside `members`, `requests`
//! beside `events`, `token_hashes` beside `device_tokens`, `push_token_owners`
//! beside `push_tokens`). Times are ms since the epoch and counters `BIGINT`,
//! as on SQLite; flags are `BOOLEAN`.

/// Migration steps; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    "
-- Accounts. Distribution key: the user (`name`, `user`), except where noted.
CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    phc         TEXT NOT NULL,                 -- argon2id PHC string
    created_ms  BIGINT NOT NULL,
    disabled_ms BIGINT                         -- set while the account may not sign in
);
CREATE TABLE device_tokens (
    \"user\"     TEXT NOT NULL,
    device     TEXT NOT NULL,
    hash       BYTEA NOT NULL,                 -- SHA-256 of the token
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (\"user\", device)
);
-- A bare token (HTTP `Bearer`) finds its device here. Distribution key: `hash`.
CREATE TABLE token_hashes (
    hash     BYTEA PRIMARY KEY,
    \"user\"   TEXT NOT NULL,
    device   TEXT NOT NULL
);
-- Password changes, removals and disablings, read by every broker node to sign
-- devices out. Small and append-only: a reference table (copied to every node).
CREATE TABLE revocations (
    id     BIGSERIAL PRIMARY KEY,
    \"user\" TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);

-- Conversations. Distribution key: `conv`.
CREATE TABLE conversations (
    conv       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,                  -- 'dm' or 'group'
    name       TEXT NOT NULL,                  -- the group's name; '' for a dm
    created_ms BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,                -- newest event's seq; seq is gap-free from 1
    closed     BOOLEAN NOT NULL DEFAULT FALSE  -- a dm with a removed user
);
CREATE TABLE members (
    conv          TEXT NOT NULL,
    \"user\"        TEXT NOT NULL,
    role          TEXT NOT NULL,               -- 'admin' or 'member'
    joined_seq    BIGINT NOT NULL,             -- first seq the member may see
    left_seq      BIGINT,                      -- last seq the member may see; NULL while a member
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    read_seq      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conv, \"user\")
);
-- A user's conversations (the `conversations` list, search's readable set).
-- Distribution key: `user`.
CREATE TABLE memberships (
    \"user\"     TEXT NOT NULL,
    conv       TEXT NOT NULL,
    joined_seq BIGINT NOT NULL,
    left_seq   BIGINT,
    PRIMARY KEY (\"user\", conv)
);
CREATE TABLE events (
    conv           TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    ts             BIGINT NOT NULL,
    kind           TEXT NOT NULL,              -- message, member, edit, delete, reaction
    sender         TEXT NOT NULL,
    device         TEXT NOT NULL,
    req_id         TEXT,                       -- the sender's request id
    retired_req_id TEXT,                       -- a removed sender's request id
    body           TEXT,                       -- message text (latest edit); NULL once deleted
    action         TEXT,                       -- member events: created/added/removed/left
    target         TEXT,                       -- member events: who joined or went
    ref_seq        BIGINT,                     -- message: reply_to; edit/delete/reaction: target
    edited_ts      BIGINT,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    attachments    TEXT,                       -- JSON [{file,name,size,type}]
    useq_lo        BIGINT,                     -- a dm message's two inbox useqs
    useq_hi        BIGINT,
    PRIMARY KEY (conv, seq)
);
CREATE INDEX events_edits ON events (conv, ref_seq) WHERE kind = 'edit';
-- Request ids: a request repeated with the same id is stored once, whichever
-- bridge sees the repeat. Distribution key: `sender`.
CREATE TABLE requests (
    sender TEXT NOT NULL,
    req_id TEXT NOT NULL,
    conv   TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    PRIMARY KEY (sender, req_id)
);
CREATE TABLE reactions (
    conv  TEXT NOT NULL,
    seq   BIGINT NOT NULL,
    \"user\" TEXT NOT NULL,
    emoji TEXT NOT NULL,
    ts    BIGINT NOT NULL,
    PRIMARY KEY (conv, seq, \"user\")
);
-- Which messages carry which uploads. Distribution key: `file` (a download's
-- permission check starts from the file).
CREATE TABLE attachments (
    file TEXT NOT NULL,
    conv TEXT NOT NULL,
    seq  BIGINT NOT NULL,
    PRIMARY KEY (file, conv, seq)
);

-- Per user. Distribution key: `user`.
CREATE TABLE user_seqs (
    \"user\"    TEXT PRIMARY KEY,
    last_useq BIGINT NOT NULL                  -- newest inbox row's useq; gap-free from 1
);
CREATE TABLE inbox (
    \"user\"  TEXT NOT NULL,
    useq    BIGINT NOT NULL,
    conv    TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    rstatus TEXT,                              -- receipts: 'delivered'/'read'; NULL: the event
    ruser   TEXT,
    rts     BIGINT,
    PRIMARY KEY (\"user\", useq)
);
CREATE TABLE devices (
    \"user\"     TEXT NOT NULL,
    device     TEXT NOT NULL,
    online     BOOLEAN NOT NULL,
    changed_ms BIGINT NOT NULL,
    PRIMARY KEY (\"user\", device)
);
CREATE TABLE presence (
    \"user\"    TEXT PRIMARY KEY,
    online    BOOLEAN NOT NULL,                -- the aggregate last published on status/<user>
    last_seen BIGINT
);
CREATE TABLE push_tokens (
    \"user\"        TEXT NOT NULL,
    device        TEXT NOT NULL,
    platform      TEXT NOT NULL,               -- 'apns' or 'fcm'
    token         TEXT NOT NULL,
    registered_ms BIGINT NOT NULL,
    PRIMARY KEY (\"user\", device, platform, token)
);
-- A push token belongs to one app install, one (user, device) at a time.
-- Distribution key: `token`.
CREATE TABLE push_token_owners (
    platform TEXT NOT NULL,
    token    TEXT NOT NULL,
    \"user\"   TEXT NOT NULL,
    device   TEXT NOT NULL,
    PRIMARY KEY (platform, token)
);
CREATE TABLE mutes (
    \"user\" TEXT NOT NULL,
    conv   TEXT NOT NULL,
    until  BIGINT,                             -- no pushes before this ts; NULL: for ever
    PRIMARY KEY (\"user\", conv)
);
-- Distribution key: `blocker`.
CREATE TABLE blocks (
    blocker    TEXT NOT NULL,
    blocked    TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
-- Uploads. Distribution key: `file`.
CREATE TABLE uploads (
    file       TEXT PRIMARY KEY,
    uploader   TEXT NOT NULL,
    sha256     TEXT NOT NULL,                  -- hex; the name of the bytes on disk
    size       BIGINT NOT NULL,
    type       TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
",
    "
-- Several bridges: users are spread over 64 slots (`slots::slot_of`), each
-- leased to one bridge at a time. A reference table (every node reads it).
CREATE TABLE bridge_slots (
    slot           INTEGER PRIMARY KEY,
    owner          TEXT,                       -- the bridge instance holding it
    lease_until_ms BIGINT NOT NULL DEFAULT 0   -- its lease ends then unless renewed
);
INSERT INTO bridge_slots (slot) SELECT generate_series(0, 63);
-- The bridges alive, by instance: each renews its row with its leases.
CREATE TABLE bridges (
    instance TEXT PRIMARY KEY,
    seen_ms  BIGINT NOT NULL
);
-- A group event's inbox rows, for a repeated request's redelivery (a query
-- across users, rare: docs/SCALING.md).
CREATE INDEX inbox_by_event ON inbox (conv, seq) WHERE rstatus IS NULL;
",
    "
-- Search: a trigram index on the text of the messages that are not deleted,
-- which `ILIKE` on each word of a query reads (`engine::search`). `pg_trgm` is
-- a trusted extension (PostgreSQL 13 on): the database's owner, or any role
-- with CREATE on it, may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX events_text ON events USING gin (body gin_trgm_ops)
    WHERE kind = 'message' AND NOT deleted;
",
    "
-- Uploads by the hash of their bytes (the bytes go with the last one), by age
-- (the sweep), and the uploads a message carries (its deletion).
CREATE INDEX uploads_by_sha ON uploads (sha256);
CREATE INDEX uploads_by_age ON uploads (created_ms);
CREATE INDEX attachments_by_message ON attachments (conv, seq);
",
    "
-- Retention (`storage.retention_days`, `engine::retention`): old events found
-- by age, and the pass every bridge carries on. One row, a reference table:
-- the bridge that locks it runs the next step of the pass.
CREATE INDEX events_by_age ON events (ts, conv, seq);
CREATE TABLE retention (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    after_ts     BIGINT,                       -- the pass goes on after this event (by age);
    after_conv   TEXT,                         -- NULL: a new pass, from the oldest
    after_seq    BIGINT,
    removed      BIGINT NOT NULL DEFAULT 0,    -- events removed in the pass so far
    next_pass_ms BIGINT NOT NULL DEFAULT 0     -- no new pass begins before this
);
INSERT INTO retention (id) VALUES (1);
",
];
