//! Schema migrations: one numbered list for both backends.
//!
//! Each migration has a number, what it is for, and its SQL for SQLite and for PostgreSQL
//! (empty where a backend has nothing to do: replica worker pictures only exist with several
//! replicas). Both backends record the same numbers in `schema_migrations`, so a number means
//! the same change everywhere. Append only: a released migration is never edited.
//!
//! Until this list existed, the backends numbered on their own, and SQLite recorded the token
//! lifecycle as its migration 4; [`sqlite_renumbered`] recognises such a database and records
//! it as 5, which is what it is.

/// One schema change.
pub(crate) struct Migration {
    pub number: i64,
    pub what: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        number: 1,
        what: "switches, the append-only audit log, tokens",
        sqlite: r#"
CREATE TABLE switches (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    is_primary  INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    changed_at  INTEGER NOT NULL,
    changed_by  TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX switches_one_primary ON switches (is_primary)
    WHERE is_primary = 1 AND deleted = 0;

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    action      TEXT NOT NULL,
    switch      TEXT,
    from_state  TEXT,
    to_state    TEXT,
    version     INTEGER,
    actor       TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    remote_addr TEXT,
    at          INTEGER NOT NULL,
    -- The switch as it was right after this entry (JSON), so a watcher that reconnects with
    -- Last-Event-ID is replayed exactly what it missed. NULL for token entries.
    snapshot    TEXT
);
CREATE UNIQUE INDEX audit_switch_version ON audit (switch, version) WHERE switch IS NOT NULL;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
"#,
        postgres: r#"
CREATE TABLE switches (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    is_primary  BOOLEAN NOT NULL DEFAULT FALSE,
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused')),
    version     BIGINT NOT NULL CHECK (version >= 1),
    changed_at  BIGINT NOT NULL,
    changed_by  TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    deleted     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX switches_one_primary ON switches (is_primary)
    WHERE is_primary AND NOT deleted;

CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    action      TEXT NOT NULL,
    switch      TEXT,
    from_state  TEXT,
    to_state    TEXT,
    version     BIGINT,
    actor       TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT,
    remote_addr TEXT,
    at          BIGINT NOT NULL,
    -- The switch as it was right after this entry (JSON); NULL for token entries.
    snapshot    TEXT
);
CREATE UNIQUE INDEX audit_switch_version ON audit (switch, version) WHERE switch IS NOT NULL;
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
"#,
    },
    Migration {
        number: 2,
        what: "the ramp of a gradual release",
        sqlite: r#"
-- The gradual release in progress (JSON of brb_api::Ramp), NULL when none.
ALTER TABLE switches ADD COLUMN ramp TEXT;
"#,
        postgres: r#"
ALTER TABLE switches ADD COLUMN ramp TEXT;
"#,
    },
    Migration {
        number: 3,
        what: "the notification outbox",
        sqlite: r#"
-- Notifications to deliver, written in the same transaction as the change they announce.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key      TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    event           TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_attempt_at INTEGER,
    delivered_at    INTEGER,
    failed          INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND failed = 0;
"#,
        postgres: r#"
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    dedupe_key      TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    event           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_attempt_at BIGINT,
    delivered_at    BIGINT,
    failed          BOOLEAN NOT NULL DEFAULT FALSE,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND NOT failed;
"#,
    },
    Migration {
        number: 4,
        what: "the worker pictures replicas share (PostgreSQL only: one SQLite process holds every worker)",
        sqlite: r#""#,
        postgres: r#"
-- Worker acknowledgements are soft state kept by the replica a worker reports to; each replica
-- publishes its picture here about once a second so every replica can count all workers.
CREATE TABLE replica_workers (
    replica    TEXT PRIMARY KEY,
    doc        TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
"#,
    },
    Migration {
        number: 5,
        what: "token lifecycle: expiry, scope, rotation, last use",
        sqlite: r#"
-- Token lifecycle: expiry, scope and the previous secret during a rotation (JSON of
-- brb_store::TokenPolicy, NULL when none), and the last successful use.
ALTER TABLE tokens ADD COLUMN policy TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;
ALTER TABLE tokens ADD COLUMN last_used_addr TEXT;
"#,
        postgres: r#"
-- Token lifecycle: expiry, scope and the previous secret during a rotation (JSON of
-- brb_store::TokenPolicy, NULL when none), and the last successful use.
ALTER TABLE tokens ADD COLUMN policy TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT;
ALTER TABLE tokens ADD COLUMN last_used_addr TEXT;
"#,
    },
    Migration {
        number: 6,
        what: "a resume waiting for a second operator's approval",
        sqlite: r#"
-- The open resume request (JSON of brb_api::ResumeRequest), NULL when none.
ALTER TABLE switches ADD COLUMN resume_request TEXT;
"#,
        postgres: r#"
ALTER TABLE switches ADD COLUMN resume_request TEXT;
"#,
    },
];

/// Under the old SQLite numbering, migration 4 was the token lifecycle (now 5), and there was
/// no 5. Given the recorded numbers and whether the `tokens` table has its `policy` column,
/// whether 5 must be recorded as applied (it was, as 4).
pub(crate) fn sqlite_renumbered(recorded: &[i64], tokens_have_policy: bool) -> bool {
    recorded.contains(&4) && !recorded.contains(&5) && tokens_have_policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_run_from_one_without_gaps_and_every_change_has_sql() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.number, i as i64 + 1, "{}", m.what);
            assert!(
                !m.sqlite.trim().is_empty() || !m.postgres.trim().is_empty(),
                "migration {} does nothing",
                m.number
            );
        }
    }

    #[test]
    fn only_old_sqlite_databases_are_renumbered() {
        assert!(sqlite_renumbered(&[1, 2, 3, 4], true));
        assert!(
            !sqlite_renumbered(&[1, 2, 3, 4], false),
            "a new database at 4 of 5"
        );
        assert!(!sqlite_renumbered(&[1, 2, 3, 4, 5], true));
        assert!(!sqlite_renumbered(&[], false));
    }
}
