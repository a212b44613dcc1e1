//! The audit trail as an append-only, gapless sequence of events, each with its Merkle leaf
//! (the canonical record the server's `auditlog` tree hashes), and the signed checkpoints.

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

    /// Appends events in one transaction (group commit: one durable write for many events)
    /// and returns each one's sequence number and leaf. `leaf(i, seq)` makes the Merkle leaf of
    /// `events[i]` once its sequence number is known; a failure rolls the whole batch back.
    pub async fn append_audit_batch(
        &self,
        events: &[AuditEvent],
        leaf: &(dyn Fn(usize, i64) -> std::result::Result<String, String> + Send + Sync),
    ) -> Result<Vec<(i64, String)>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let next: Option<i64> =
            sqlx::query_scalar("UPDATE audit_head SET next_seq = next_seq + $1 WHERE id = 1 RETURNING next_seq")
                .bind(events.len() as i64)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(next) = next else {
            return Err(StoreError::Database("audit_head row is missing".into()));
        };
        let first = next - events.len() as i64;
        let seqs: Vec<i64> = (0..events.len() as i64).map(|i| first + i).collect();
        let leaves = seqs
            .iter()
            .enumerate()
            .map(|(i, &seq)| leaf(i, seq))
            .collect::<std::result::Result<Vec<String>, String>>()
            .map_err(StoreError::Database)?;
        // Many rows per statement: one round trip to the database for up to ROWS events.
        const ROWS: usize = 500;
        for (part, start) in events.chunks(ROWS).zip((0..).step_by(ROWS)) {
            let values: Vec<String> = (0..part.len())
                .map(|r| {
                    let b = r * 7;
                    format!("(${}, ${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7)
                })
                .collect();
            let sql = format!(
                "INSERT INTO audit_events (seq, event_time, kind, actor, outcome, details_json, leaf) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (i, event) in part.iter().enumerate() {
                q = q
                    .bind(seqs[start + i])
                    .bind(event.time)
                    .bind(event.kind.as_str())
                    .bind(event.actor.as_str())
                    .bind(event.outcome.as_str())
                    .bind(event.details_json.as_str())
                    .bind(leaves[start + i].as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(seqs.into_iter().zip(leaves).collect())
    }

    /// Leaves of events with `seq > after_seq`, in order (`None` for events written before the
    /// audit log existed and not yet given a leaf).
    pub async fn audit_leaves(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Option<String>)>> {
        let rows = sqlx::query("SELECT seq, leaf FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("seq")?, r.try_get("leaf")?))).collect()
    }

    /// Sets the leaf of an event written before the audit log existed (only if it has none).
    pub async fn set_audit_leaf(&self, seq: i64, leaf: &str) -> Result<()> {
        sqlx::query("UPDATE audit_events SET leaf = $1 WHERE seq = $2 AND leaf IS NULL")
            .bind(leaf)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a signed checkpoint (one per tree size; a second one for a size is refused).
    pub async fn insert_audit_checkpoint(&self, size: i64, root_hex: &str, note: &str, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO audit_checkpoints (size, root, note, created_at) VALUES ($1, $2, $3, $4)")
            .bind(size)
            .bind(root_hex)
            .bind(note)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every signed checkpoint as (size, root hex, note, created_at), smallest first.
    pub async fn audit_checkpoints(&self) -> Result<Vec<(i64, String, String, i64)>> {
        let rows = sqlx::query("SELECT size, root, note, created_at FROM audit_checkpoints ORDER BY size")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("size")?, r.try_get("root")?, r.try_get("note")?, r.try_get("created_at")?)))
            .collect()
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
