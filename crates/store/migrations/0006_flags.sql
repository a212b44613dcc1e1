-- One-time server facts, set once and never cleared: `security_admin_bootstrap` records that the
-- first Security Admin was granted without an approval (that way is then closed for good).
CREATE TABLE server_flags (
    name TEXT PRIMARY KEY,
    set_at BIGINT NOT NULL
);
