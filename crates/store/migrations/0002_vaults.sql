-- Vaults: a name, a kind and the policy that decides what a restore approval needs.
CREATE TABLE vaults (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('test', 'production')),
    policy_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
