//! Who introduced whom (enrollment provenance), and deleting what has expired.

use sqlx::Row;

use crate::{Result, Store};

/// Rows deleted by one [`Store::purge_expired`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// WebAuthn ceremony states past their expiry.
    pub ceremonies: u64,
    /// Device codes expired more than the grace period ago.
    pub device_codes: u64,
    /// Enrollment links expired (used or not) more than the grace period ago.
    pub enroll_links: u64,
    /// Refresh tokens expired more than the grace period ago.
    pub refresh_tokens: u64,
    /// Sessions expired or revoked more than the grace period ago (and no longer referenced).
    pub sessions: u64,
}

impl Purged {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.ceremonies + self.device_codes + self.enroll_links + self.refresh_tokens + self.sessions
    }
}

impl Store {
    /// Records that `introduced_by` created the enrollment link `subject` (`user` or
    /// `credential`, by id) came from. The first record of a subject stands.
    pub async fn record_introduction(&self, kind: &str, subject: &str, introduced_by: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO introductions (subject_kind, subject_id, introduced_by, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (subject_kind, subject_id) DO NOTHING",
        )
        .bind(kind)
        .bind(subject)
        .bind(introduced_by)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who introduced the account `user_id` and the credential `credential_id` (either may be
    /// unrecorded: accounts from before provenance was kept).
    pub async fn introducers(&self, user_id: &str, credential_id: Option<&str>) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT introduced_by FROM introductions WHERE (subject_kind = 'user' AND subject_id = $1) \
             OR (subject_kind = 'credential' AND subject_id = $2)",
        )
        .bind(user_id)
        .bind(credential_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("introduced_by")?)).collect()
    }

    /// Deletes what expired: ceremony states at once; device codes, enrollment links, refresh
    /// tokens and sessions once they expired (or, sessions, were revoked) more than `grace`
    /// seconds before `now`, so recent refusals can still say "expired" rather than "unknown".
    /// Sessions still referenced by a kept refresh token or device code stay.
    pub async fn purge_expired(&self, now: i64, grace: i64) -> Result<Purged> {
        let cutoff = now - grace;
        let mut tx = self.begin_write().await?;
        let mut purged = Purged::default();
        for (slot, sql, t) in [
            (&mut purged.ceremonies, "DELETE FROM ceremonies WHERE expires_at <= $1", now),
            (&mut purged.device_codes, "DELETE FROM device_codes WHERE expires_at <= $1", cutoff),
            (&mut purged.enroll_links, "DELETE FROM enroll_links WHERE expires_at <= $1", cutoff),
            (
                &mut purged.refresh_tokens,
                "DELETE FROM refresh_tokens WHERE expires_at <= $1 OR session_id IN \
                 (SELECT id FROM sessions WHERE expires_at <= $1 OR revoked_at <= $1)",
                cutoff,
            ),
            (
                &mut purged.sessions,
                "DELETE FROM sessions WHERE (expires_at <= $1 OR revoked_at <= $1) \
                 AND NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = sessions.id) \
                 AND NOT EXISTS (SELECT 1 FROM device_codes d WHERE d.session_id = sessions.id)",
                cutoff,
            ),
        ] {
            *slot = sqlx::query(sql).bind(t).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(purged)
    }
}
