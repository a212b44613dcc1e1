-- Approvals: one generic resource (restores now; device logins, critical operations and bot
-- delegations later). The operation is stored as canonical JSON under its digest; only that
-- operation can ever run under this approval.
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    vault TEXT NOT NULL,
    operation_json TEXT NOT NULL,
    digest TEXT NOT NULL,
    requester_id TEXT NOT NULL,
    requester_session TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    approver_id TEXT,
    approved_at BIGINT,
    evidence_json TEXT,
    grant_hash TEXT
);
CREATE INDEX approvals_by_grant ON approvals (grant_hash);
