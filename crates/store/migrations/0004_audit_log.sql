-- The verifiable audit log: each event's Merkle leaf (its canonical RFC 8785 JSON, exactly the
-- bytes that are hashed and exported) and the signed checkpoints. Events written before this
-- migration get their leaf when the server first starts (in sequence order).
ALTER TABLE audit_events ADD COLUMN leaf TEXT;
CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY,
    root TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
