//! The hub's schema, as numbered migrations written once for both engines.

/// Schema changes, applied in order, each once (recorded in `schema_migrations`).
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
    "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        totp_secret TEXT NOT NULL, totp_last_step BIGINT NOT NULL DEFAULT 0, disabled BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL);
     CREATE TABLE login_failures (name TEXT PRIMARY KEY, failures BIGINT NOT NULL, locked_until BIGINT NOT NULL);
     CREATE TABLE sites (name TEXT PRIMARY KEY, allow_from TEXT NOT NULL DEFAULT '',
        require_ticket BIGINT NOT NULL DEFAULT 0);
     CREATE TABLE devices (id TEXT PRIMARY KEY, site TEXT NOT NULL REFERENCES sites(name), consent TEXT NOT NULL,
        created_at BIGINT NOT NULL);
     CREATE TABLE entitlements (user_name TEXT NOT NULL REFERENCES users(name), site TEXT NOT NULL REFERENCES sites(name),
        PRIMARY KEY (user_name, site));
     CREATE TABLE tokens (hash TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users(name),
        expires_at BIGINT NOT NULL);
     CREATE TABLE sessions (id TEXT PRIMARY KEY, specialist TEXT NOT NULL, device TEXT NOT NULL, service TEXT NOT NULL,
        reason TEXT NOT NULL, ticket TEXT, source TEXT NOT NULL, relay TEXT NOT NULL, created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL, consent_required BIGINT NOT NULL, state TEXT NOT NULL, ended_at BIGINT,
        end_reason TEXT, ended_by TEXT, bytes_to_device BIGINT NOT NULL DEFAULT 0,
        bytes_to_client BIGINT NOT NULL DEFAULT 0, duration_ms BIGINT NOT NULL DEFAULT 0);
     CREATE INDEX sessions_by_specialist ON sessions (specialist, created_at);
     CREATE TABLE audit (seq BIGINT PRIMARY KEY, ts BIGINT NOT NULL, hash TEXT NOT NULL, line TEXT NOT NULL);
     CREATE INDEX audit_by_ts ON audit (ts);
     CREATE TABLE anchors (source TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL, at BIGINT NOT NULL)",
    ),
    (
        2,
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, device TEXT NOT NULL REFERENCES devices(id), kind TEXT NOT NULL,
        target TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', consent_required BIGINT NOT NULL,
        created_by TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deadline BIGINT NOT NULL);
     CREATE INDEX jobs_by_device ON jobs (device, created_at);
     CREATE INDEX jobs_by_state ON jobs (state, deadline)",
    ),
    (3, "ALTER TABLE jobs ADD COLUMN output TEXT NOT NULL DEFAULT ''"),
    (
        4,
        "ALTER TABLE jobs ADD COLUMN rollout TEXT NOT NULL DEFAULT '';
     CREATE INDEX jobs_by_rollout ON jobs (rollout);
     CREATE TABLE rollouts (id TEXT PRIMARY KEY, site TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
        devices TEXT NOT NULL, batch_size BIGINT NOT NULL, abort_after BIGINT NOT NULL,
        consent_required BIGINT NOT NULL, timeout_secs BIGINT NOT NULL, started BIGINT NOT NULL, state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL, created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL)",
    ),
    (5, "ALTER TABLE sessions ADD COLUMN transport TEXT NOT NULL DEFAULT ''"),
    (
        6,
        "CREATE TABLE anchor_history (source TEXT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL,
        sig TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (source, seq))",
    ),
    (7, "CREATE INDEX sessions_by_state ON sessions (state)"),
    (
        8,
        "CREATE TABLE device_certs (device TEXT PRIMARY KEY REFERENCES devices(id), not_after BIGINT NOT NULL DEFAULT 0,
        seen_at BIGINT NOT NULL DEFAULT 0, csr TEXT NOT NULL DEFAULT '', requested_at BIGINT NOT NULL DEFAULT 0,
        cert TEXT NOT NULL DEFAULT '', issued_not_after BIGINT NOT NULL DEFAULT 0, issued_by TEXT NOT NULL DEFAULT '',
        issued_at BIGINT NOT NULL DEFAULT 0)",
    ),
    (
        9,
        "CREATE TABLE anchor_deliveries (source TEXT NOT NULL, relay TEXT NOT NULL, seq BIGINT NOT NULL,
        PRIMARY KEY (source, relay))",
    ),
    (
        10,
        "ALTER TABLE devices ADD COLUMN retired_at BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE devices ADD COLUMN retired_by TEXT NOT NULL DEFAULT '';
     ALTER TABLE devices ADD COLUMN retired_reason TEXT NOT NULL DEFAULT '';
     CREATE INDEX devices_by_retired ON devices (retired_at)",
    ),
];

/// The schema version this build writes.
pub(super) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
