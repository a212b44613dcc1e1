//! The audit trail as an append-only, gapless sequence of events (a later issue adds the Merkle
//! log and signed checkpoints on top of it).

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{AuditEvent, AuditRecord, Result, Store, StoreError};

impl Store {
    /// Appends an event and returns its sequence number (1, 2, 3, … without gaps). The number is
    /// drawn from the `audit_head` row in the same transaction as the insert, so concurrent
    /// appends get distinct, consecutive numbers and a rolled-back append leaves no hole.
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let next: Option<i64> =
            sqlx::query_scalar("UPDATE audit_head SET next_seq = next_seq + 1 WHERE id = 1 RETURNING next_seq")
                .fetch_optional(&mut *tx)
                .await?;
        let Some(next) = next else {
            return Err(StoreError::Database("audit_head row is missing".into()));
        };
        let seq = next - 1;
        sqlx::query(
            "INSERT INTO audit_events (seq, event_time, kind, actor, outcome, details_json) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(seq)
        .bind(event.time)
        .bind(event.kind.as_str())
        .bind(event.actor.as_str())
        .bind(event.outcome.as_str())
        .bind(event.details_json.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Up to `limit` events with `seq > after_seq`, in sequence order (pass 0 to start at the
    /// beginning).
    pub async fn audit_events(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT seq, event_time, kind, actor, outcome, details_json FROM audit_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        event: AuditEvent {
            time: row.try_get("event_time")?,
            kind: row.try_get("kind")?,
            actor: row.try_get("actor")?,
            outcome: row.try_get("outcome")?,
            details_json: row.try_get("details_json")?,
        },
    })
}
