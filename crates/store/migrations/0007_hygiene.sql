-- Who introduced an account or a credential: the `created_by` of the enrollment link it was
-- enrolled from (a user name, "first-start", "admin enroll-link (server host)"). An approval
-- by an account or credential the requester introduced does not count as another person.
CREATE TABLE introductions (
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('user', 'credential')),
    subject_id    TEXT NOT NULL,
    introduced_by TEXT NOT NULL,
    at            BIGINT NOT NULL,
    PRIMARY KEY (subject_kind, subject_id)
);

-- Housekeeping deletes what expired; these keep it from scanning whole tables.
CREATE INDEX device_codes_expiry ON device_codes (expires_at);
CREATE INDEX enroll_links_expiry ON enroll_links (expires_at);
CREATE INDEX sessions_expiry ON sessions (expires_at);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
