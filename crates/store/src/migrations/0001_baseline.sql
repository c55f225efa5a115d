-- Migration 1, the baseline: the schema of the releases before versioned
-- migrations, written once for both engines (migrations.rs translates it:
-- INTEGER is BIGINT and BLOB is BYTEA on PostgreSQL; AUTO_ID is a primary
-- key the database assigns; `-- sqlite only` and `-- postgres only` open a
-- block that one engine skips, up to `-- end`). Every statement is
-- idempotent, so that a database from before migrations were recorded is
-- brought up to it in place.
-- postgres only
-- The stream counter: every position a client can sync is taken from this
-- row inside the write transaction that uses it (store.rs).
CREATE TABLE IF NOT EXISTS stream_counter (
    id BIGINT PRIMARY KEY CHECK (id = 0),
    pos BIGINT NOT NULL
);
INSERT INTO stream_counter (id, pos) VALUES (0, 0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION missive_stream_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('missive_stream', NEW.pos::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER stream_counter_notify AFTER UPDATE ON stream_counter
    FOR EACH ROW EXECUTE FUNCTION missive_stream_notify();
-- end
CREATE TABLE IF NOT EXISTS server_keys (
    version TEXT PRIMARY KEY,
    der BLOB NOT NULL,
    created_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    is_admin INTEGER NOT NULL DEFAULT 0,
    deactivated INTEGER NOT NULL DEFAULT 0,
    displayname TEXT,
    avatar_url TEXT,
    created_ts INTEGER NOT NULL
);
-- Guest accounts (`/register?kind=guest`, when `allow_guest_access` is on).
CREATE TABLE IF NOT EXISTS guest_users (
    user_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts INTEGER,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE IF NOT EXISTS access_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    expires_ts INTEGER
);
CREATE INDEX IF NOT EXISTS access_tokens_device ON access_tokens (user_id, device_id);
-- Short-lived single-use tokens an existing session hands a new device
-- (`/login/get_token`, then `m.login.token`), stored hashed.
CREATE TABLE IF NOT EXISTS login_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_device ON refresh_tokens (user_id, device_id);
CREATE TABLE IF NOT EXISTS registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_ts INTEGER
);
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    stream_pos INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    json TEXT NOT NULL,
    unsigned TEXT,
    state_group INTEGER NOT NULL,
    redacted_by TEXT,
    rel_type TEXT,
    relates_to TEXT,
    txn_device TEXT,
    txn_id TEXT
);
CREATE INDEX IF NOT EXISTS events_room ON events (room_id, stream_pos);
CREATE INDEX IF NOT EXISTS events_relations ON events (relates_to, rel_type);
CREATE INDEX IF NOT EXISTS events_ts ON events (room_id, origin_server_ts);
CREATE UNIQUE INDEX IF NOT EXISTS events_txn ON events (sender, txn_device, txn_id) WHERE txn_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
CREATE TABLE IF NOT EXISTS state_groups (
    id AUTO_ID,
    room_id TEXT NOT NULL,
    prev_id INTEGER,
    chain_len INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state_group_entries (
    group_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (group_id, type, state_key)
);
CREATE TABLE IF NOT EXISTS current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    stream_pos INTEGER NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX IF NOT EXISTS current_state_members ON current_state (state_key, membership) WHERE type = 'm.room.member';
CREATE TABLE IF NOT EXISTS forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
CREATE TABLE IF NOT EXISTS room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX IF NOT EXISTS account_data_pos ON account_data (user_id, stream_pos);
CREATE TABLE IF NOT EXISTS receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    stream_pos INTEGER NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX IF NOT EXISTS receipts_pos ON receipts (room_id, stream_pos);
CREATE TABLE IF NOT EXISTS filters (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
-- End-to-end encryption: device keys, one-time and fallback keys,
-- cross-signing keys and signatures, device-list changes, to-device messages.
CREATE TABLE IF NOT EXISTS device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE IF NOT EXISTS one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);
CREATE TABLE IF NOT EXISTS fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);
CREATE TABLE IF NOT EXISTS cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);
-- Signatures uploaded through /keys/signatures/upload, on a device (target_key
-- is the device ID) or a cross-signing key (target_key is its public key).
CREATE TABLE IF NOT EXISTS key_signatures (
    target_user TEXT NOT NULL,
    target_key TEXT NOT NULL,
    signer_user TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key_id)
);
-- A user's devices or keys changed at stream_pos; everyone sharing a room
-- with them is told, or only `only_for` when set (a signature they made).
CREATE TABLE IF NOT EXISTS device_list_changes (
    stream_pos INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    only_for TEXT,
    PRIMARY KEY (stream_pos, user_id)
);
CREATE TABLE IF NOT EXISTS to_device (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_pos)
);
CREATE INDEX IF NOT EXISTS to_device_pos ON to_device (stream_pos);
CREATE TABLE IF NOT EXISTS to_device_txns (
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    type TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (sender, sender_device, type, txn_id)
);
-- The highest stream position of rows since deleted (acknowledged to-device
-- messages), so that the counter never goes back after a restart.
CREATE TABLE IF NOT EXISTS stream_watermark (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    pos INTEGER NOT NULL
);
-- Server-side key backup: versions (kept as tombstones when deleted, so a
-- version number is never reused) and the encrypted room keys in each.
CREATE TABLE IF NOT EXISTS backup_versions (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    etag INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);
CREATE TABLE IF NOT EXISTS backup_keys (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count INTEGER NOT NULL,
    is_verified INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
-- MSC3814 dehydrated devices: at most one per user; the device itself is a
-- row in devices (without tokens), so it has keys and gets to-device messages.
CREATE TABLE IF NOT EXISTS dehydrated_devices (
    user_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL
);
-- The content repository: one row per local media ID (see media.rs). The
-- bytes are in the media backend under their SHA-256; a reserved ID
-- (/media/v1/create) has no sha256 until its upload, and lapses at expires_ts.
CREATE TABLE IF NOT EXISTS media (
    media_id TEXT PRIMARY KEY,
    uploader TEXT NOT NULL,
    content_type TEXT,
    filename TEXT,
    size INTEGER,
    sha256 TEXT,
    created_ts INTEGER NOT NULL,
    expires_ts INTEGER,
    quarantined INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS media_pending ON media (uploader, expires_ts) WHERE sha256 IS NULL;
-- Full-text search over room events (search.rs). The rowid is the event's
-- stream position; contentless, since the text is in events.json already.
-- Diacritics fold, so "reunion" finds "Réunion".
-- sqlite only
CREATE VIRTUAL TABLE IF NOT EXISTS event_search USING fts5(
    body, name, topic,
    content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
-- end
-- postgres only
CREATE TABLE IF NOT EXISTS event_search (
    stream_pos BIGINT PRIMARY KEY,
    doc TSVECTOR NOT NULL
);
CREATE INDEX IF NOT EXISTS event_search_doc ON event_search USING GIN (doc);
-- end
-- One row once the events stored before the search index existed are indexed.
CREATE TABLE IF NOT EXISTS search_backfill (
    id INTEGER PRIMARY KEY CHECK (id = 0)
);
-- Reports of events, rooms and users (/report), for the administrators.
CREATE TABLE IF NOT EXISTS reports (
    id AUTO_ID,
    reporter TEXT NOT NULL,
    kind TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    user_id TEXT,
    reason TEXT,
    score INTEGER,
    received_ts INTEGER NOT NULL
);
-- Push (push.rs): the notifications users' push rules asked for (event_pos
-- is the event's position, stream_pos when the row was recorded; whether one
-- is read follows from the receipts), and the pushers to deliver them to.
CREATE TABLE IF NOT EXISTS push_notifications (
    id AUTO_ID,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_pos INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    actions TEXT NOT NULL,
    highlight INTEGER NOT NULL,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS push_notifications_room ON push_notifications (user_id, room_id, event_pos);
CREATE INDEX IF NOT EXISTS push_notifications_user ON push_notifications (user_id, id);
CREATE INDEX IF NOT EXISTS push_notifications_ts ON push_notifications (ts);
-- A user's latest event in a room, which they have read up to.
CREATE INDEX IF NOT EXISTS events_room_sender ON events (room_id, sender, stream_pos);
CREATE TABLE IF NOT EXISTS pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    json TEXT NOT NULL,
    pushkey_ts INTEGER NOT NULL,
    device_id TEXT,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX IF NOT EXISTS pushers_key ON pushers (app_id, pushkey);
CREATE TABLE IF NOT EXISTS media_refs (
    media_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (media_id, event_id)
);
CREATE TABLE IF NOT EXISTS profile_fields (
    user_id TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
);
-- Federation. Other servers' signing keys (expired_ts set for old_verify_keys),
-- as fetched from them or a notary; this server's retired keys.
CREATE TABLE IF NOT EXISTS remote_server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    expired_ts INTEGER,
    fetched_ts INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
CREATE TABLE IF NOT EXISTS old_server_keys (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    expired_ts INTEGER NOT NULL
);
-- What each destination server still has to be sent, oldest first: PDUs by
-- event ID, EDUs as JSON. Rows go when the destination acknowledged them.
CREATE TABLE IF NOT EXISTS federation_outbox (
    id AUTO_ID_NEVER_REUSED,
    destination TEXT NOT NULL,
    event_id TEXT,
    edu TEXT,
    expires_ts INTEGER
);
CREATE INDEX IF NOT EXISTS federation_outbox_dest ON federation_outbox (destination, id);
CREATE TABLE IF NOT EXISTS federation_destinations (
    destination TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    retry_after_ts INTEGER NOT NULL DEFAULT 0
);
-- The state group of each room's current state (the state after its
-- forward extremities, resolved when there are several).
-- The empty state group of a room, which outliers point at.
CREATE INDEX IF NOT EXISTS state_groups_empty ON state_groups (room_id) WHERE chain_len = -1;
CREATE TABLE IF NOT EXISTS room_current_group (
    room_id TEXT PRIMARY KEY,
    state_group INTEGER NOT NULL
);
-- Events from other servers that failed a check, kept so that they are
-- not fetched and checked again.
CREATE TABLE IF NOT EXISTS rejected_events (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    ts INTEGER NOT NULL
);
-- Invites from other servers to rooms this server is not in yet.
CREATE TABLE IF NOT EXISTS remote_invites (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_version TEXT NOT NULL,
    json TEXT NOT NULL,
    invite_state TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
-- OpenID tokens a user handed to a third party (an integration server),
-- which checks them with /_matrix/federation/v1/openid/userinfo.
CREATE TABLE IF NOT EXISTS openid_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts INTEGER NOT NULL
);
