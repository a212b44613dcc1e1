//! Passkey credentials: registration, use, rename, revocation (never the last one) and locking.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::write_error;
use crate::sessions::revoke_sessions_of_credential_in;
use crate::{get_flag, CredentialRecord, Result, Store, StoreError};

macro_rules! credential_columns {
    () => {
        "id, user_id, name, credential_json, counter, aaguid, attestation_format, attestation_trusted, \
         backup_eligible, backup_state, transports, created_at, last_used_at, revoked_at, locked_at, lock_reason"
    };
}

fn credential_from_row(row: &AnyRow) -> Result<CredentialRecord> {
    Ok(CredentialRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        credential_json: row.try_get("credential_json")?,
        counter: row.try_get("counter")?,
        aaguid: row.try_get("aaguid")?,
        attestation_format: row.try_get("attestation_format")?,
        attestation_trusted: get_flag(row, "attestation_trusted")?,
        backup_eligible: get_flag(row, "backup_eligible")?,
        backup_state: get_flag(row, "backup_state")?,
        transports: row.try_get("transports")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
        locked_at: row.try_get("locked_at")?,
        lock_reason: row.try_get("lock_reason")?,
    })
}

impl Store {
    /// Registers a credential. `Conflict` if a credential with this id exists (for any user, even
    /// revoked), `NotFound` if the user does not exist.
    pub async fn insert_credential(&self, c: &CredentialRecord) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO credentials (",
            credential_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(c.id.as_str())
        .bind(c.user_id.as_str())
        .bind(c.name.as_str())
        .bind(c.credential_json.as_str())
        .bind(c.counter)
        .bind(c.aaguid.as_str())
        .bind(c.attestation_format.as_str())
        .bind(i64::from(c.attestation_trusted))
        .bind(i64::from(c.backup_eligible))
        .bind(i64::from(c.backup_state))
        .bind(c.transports.as_str())
        .bind(c.created_at)
        .bind(c.last_used_at)
        .bind(c.revoked_at)
        .bind(c.locked_at)
        .bind(c.lock_reason.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "credential"))?;
        Ok(())
    }

    pub async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>> {
        let row = sqlx::query(concat!("SELECT ", credential_columns!(), " FROM credentials WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(credential_from_row).transpose()
    }

    /// All of the user's credentials, revoked and locked ones included, oldest first.
    pub async fn credentials_of(&self, user_id: &str) -> Result<Vec<CredentialRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            credential_columns!(),
            " FROM credentials WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    /// The user's credentials that may sign in (neither revoked nor locked), oldest first.
    pub async fn active_credentials_of(&self, user_id: &str) -> Result<Vec<CredentialRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            credential_columns!(),
            " FROM credentials WHERE user_id = $1 AND revoked_at IS NULL AND locked_at IS NULL ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    /// Records a successful assertion: the new signature counter, backup state and serialised
    /// credential, and the time of use — only if the stored counter is still `previous`, the
    /// value the caller checked the assertion against (compare-and-set: of two concurrent
    /// assertions only one is recorded, and the stored counter never goes backwards). Refused
    /// with `Stale` when the counter changed meanwhile, `Conflict` if the credential was revoked
    /// or locked in the meantime (so a sign-in racing a revocation fails), `NotFound` if it does
    /// not exist. Whether the counter is acceptable is the caller's decision, made before this call.
    pub async fn record_credential_use(
        &self,
        id: &str,
        previous: i64,
        counter: i64,
        backup_state: bool,
        credential_json: &str,
        now: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE credentials SET counter = $2, backup_state = $3, credential_json = $4, last_used_at = $5 \
             WHERE id = $1 AND revoked_at IS NULL AND locked_at IS NULL AND counter = $6",
        )
        .bind(id)
        .bind(counter)
        .bind(i64::from(backup_state))
        .bind(credential_json)
        .bind(now)
        .bind(previous)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(match self.credential(id).await? {
                None => StoreError::NotFound(format!("credential {id}")),
                Some(c) if c.revoked_at.is_none() && c.locked_at.is_none() => {
                    StoreError::Stale(format!("the signature counter of credential {id} changed meanwhile"))
                }
                Some(_) => StoreError::Conflict(format!("credential {id} is revoked or locked")),
            });
        }
        Ok(())
    }

    /// Renames a credential. `NotFound` if it does not exist.
    pub async fn rename_credential(&self, id: &str, name: &str) -> Result<()> {
        let done = sqlx::query("UPDATE credentials SET name = $2 WHERE id = $1")
            .bind(id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("credential {id}")));
        }
        Ok(())
    }

    /// Revokes a credential and, in the same transaction, the sessions it opened and their
    /// refresh tokens. Refused with `Conflict` if it is the user's last active credential (a user
    /// must never lock themselves out); revoking a locked or already revoked credential is
    /// allowed (the latter is a no-op). `NotFound` if it does not exist.
    pub async fn revoke_credential(&self, id: &str, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let user_id: Option<String> = sqlx::query_scalar("SELECT user_id FROM credentials WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(user_id) = user_id else {
            return Err(StoreError::NotFound(format!("credential {id}")));
        };
        // Serialise revocations of one user's credentials. SQLite's BEGIN IMMEDIATE already has;
        // under PostgreSQL this row lock stops two revocations from each seeing the other's
        // credential still active and together revoking both.
        sqlx::query("UPDATE users SET disabled = disabled WHERE id = $1")
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await?;

        let row = sqlx::query("SELECT revoked_at, locked_at FROM credentials WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        let locked_at: Option<i64> = row.try_get("locked_at")?;
        if revoked_at.is_some() {
            tx.rollback().await?;
            return Ok(());
        }
        if locked_at.is_none() {
            let others: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM credentials \
                 WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL AND locked_at IS NULL",
            )
            .bind(user_id.as_str())
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if others == 0 {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!("credential {id} is the user's last active credential")));
            }
        }
        sqlx::query("UPDATE credentials SET revoked_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        revoke_sessions_of_credential_in(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Locks a credential (e.g. after a signature-counter regression) so it can no longer sign
    /// in, and ends the sessions it opened and their refresh tokens, in one transaction. A
    /// credential already locked keeps its first lock time and reason. `NotFound` if it does not
    /// exist. Locking is allowed even for the last active credential: a possibly cloned
    /// authenticator must stop working; recovery is an enrollment link.
    pub async fn lock_credential(&self, id: &str, reason: &str, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done =
            sqlx::query("UPDATE credentials SET locked_at = $2, lock_reason = $3 WHERE id = $1 AND locked_at IS NULL")
                .bind(id)
                .bind(now)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM credentials WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("credential {id}")));
            }
        }
        revoke_sessions_of_credential_in(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
