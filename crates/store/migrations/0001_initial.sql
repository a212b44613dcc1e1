-- Strongroom metadata schema, version 1.
--
-- One file serves SQLite and PostgreSQL, so it keeps to their common subset: BIGINT for integers,
-- unix-second timestamps and 0/1 flags (the sqlx Any driver cannot decode SQLite BOOLEAN columns),
-- TEXT for ids, JSON documents and base64url-encoded bytes; no BLOB/BYTEA, no AUTOINCREMENT/SERIAL,
-- no column named after a SQL keyword (time, interval).

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    username     TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    disabled     BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
);

-- vault = '' means "every vault": a NULL inside a primary key is refused by PostgreSQL and
-- treated as distinct from every other NULL by SQLite, so it could not make the row unique.
CREATE TABLE role_assignments (
    user_id TEXT NOT NULL REFERENCES users (id),
    role    TEXT NOT NULL,
    vault   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, role, vault)
);
CREATE INDEX role_assignments_role ON role_assignments (role);

CREATE TABLE credentials (
    id                  TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL REFERENCES users (id),
    name                TEXT NOT NULL,
    credential_json     TEXT NOT NULL,
    counter             BIGINT NOT NULL,
    aaguid              TEXT NOT NULL,
    attestation_format  TEXT NOT NULL,
    attestation_trusted BIGINT NOT NULL CHECK (attestation_trusted IN (0, 1)),
    backup_eligible     BIGINT NOT NULL CHECK (backup_eligible IN (0, 1)),
    backup_state        BIGINT NOT NULL CHECK (backup_state IN (0, 1)),
    transports          TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    last_used_at        BIGINT,
    revoked_at          BIGINT,
    locked_at           BIGINT,
    lock_reason         TEXT
);
CREATE INDEX credentials_user ON credentials (user_id, created_at);

CREATE TABLE ceremonies (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    state_json TEXT NOT NULL,
    subject    TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ceremonies_expiry ON ceremonies (expires_at);

-- created_by is free text (a user id, "first-start", "admin-cli"), so it has no foreign key.
CREATE TABLE enroll_links (
    token_hash TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    role       TEXT NOT NULL,
    vault      TEXT,
    user_id    TEXT REFERENCES users (id),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id),
    credential_id TEXT NOT NULL REFERENCES credentials (id),
    auth_time     BIGINT NOT NULL,
    amr           TEXT NOT NULL,
    acr           TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_credential ON sessions (credential_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE device_codes (
    device_code_hash TEXT PRIMARY KEY,
    user_code        TEXT NOT NULL UNIQUE,
    client_id        TEXT NOT NULL,
    scope            TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    poll_interval    BIGINT NOT NULL,
    last_poll_at     BIGINT,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    session_id       TEXT REFERENCES sessions (id),
    user_id          TEXT REFERENCES users (id)
);

CREATE TABLE audit_events (
    seq          BIGINT PRIMARY KEY,
    event_time   BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    actor        TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    details_json TEXT NOT NULL
);

-- The next audit sequence number, in a single row. Appending bumps it with UPDATE … RETURNING,
-- which serialises appenders on this row in both databases (SQLite's write lock, PostgreSQL's row
-- lock), so numbers are gapless and never collide; MAX(seq)+1 would race under PostgreSQL's
-- default isolation. The Merkle log will keep its tree head beside it.
CREATE TABLE audit_head (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    next_seq BIGINT NOT NULL
);
INSERT INTO audit_head (id, next_seq) VALUES (1, 1);
