-- Critical operations: an approval may need several votes (the requester's own step-up and M
-- Security Admins), each a passkey assertion bound to the operation digest, and records the
-- result of running the operation once. Soft delete: deleted vaults and snapshots stay
-- recoverable until purge_at.
ALTER TABLE approvals ADD COLUMN required BIGINT NOT NULL DEFAULT 1;
ALTER TABLE approvals ADD COLUMN result_json TEXT;
CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approvals (id),
    user_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('requester', 'approver')),
    evidence_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (approval_id, user_id)
);
ALTER TABLE vaults ADD COLUMN deleted_at BIGINT;
ALTER TABLE vaults ADD COLUMN deleted_by TEXT;
ALTER TABLE vaults ADD COLUMN purge_at BIGINT;
CREATE TABLE deleted_snapshots (
    vault TEXT NOT NULL REFERENCES vaults (name),
    snapshot TEXT NOT NULL,
    deleted_at BIGINT NOT NULL,
    deleted_by TEXT NOT NULL,
    purge_at BIGINT NOT NULL,
    PRIMARY KEY (vault, snapshot)
);
