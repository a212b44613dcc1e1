//! Sessions and their refresh tokens: rotation on every use, and a reused token revokes its whole
//! family and session. Revocation always cascades session → refresh tokens in one transaction.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::error::write_error;
use crate::{RefreshUse, Result, Session, Store, StoreError};

macro_rules! session_columns {
    () => {
        "id, user_id, credential_id, auth_time, amr, acr, created_at, expires_at, revoked_at"
    };
}

fn session_from_row(row: &AnyRow) -> Result<Session> {
    Ok(Session {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        credential_id: row.try_get("credential_id")?,
        auth_time: row.try_get("auth_time")?,
        amr: row.try_get("amr")?,
        acr: row.try_get("acr")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Revokes, inside the caller's transaction, the sessions a credential opened and every refresh
/// token of those sessions. Returns how many sessions were live.
pub(crate) async fn revoke_sessions_of_credential_in(
    conn: &mut AnyConnection,
    credential_id: &str,
    now: i64,
) -> Result<u64> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL \
         AND session_id IN (SELECT id FROM sessions WHERE credential_id = $1)",
    )
    .bind(credential_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE credential_id = $1 AND revoked_at IS NULL")
        .bind(credential_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// Revokes, inside the caller's transaction, every token of the family, the session(s) the family
/// belongs to, and every other token of those sessions.
async fn revoke_family_in(conn: &mut AnyConnection, family_id: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = $2 WHERE revoked_at IS NULL \
         AND id IN (SELECT session_id FROM refresh_tokens WHERE family_id = $1)",
    )
    .bind(family_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL \
         AND session_id IN (SELECT session_id FROM refresh_tokens WHERE family_id = $1)",
    )
    .bind(family_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a new session. `Conflict` if the id is taken; `NotFound` if the user or credential
    /// does not exist.
    pub async fn create_session(&self, s: &Session) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO sessions (",
            session_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(s.id.as_str())
        .bind(s.user_id.as_str())
        .bind(s.credential_id.as_str())
        .bind(s.auth_time)
        .bind(s.amr.as_str())
        .bind(s.acr.as_str())
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "session"))?;
        Ok(())
    }

    /// Reads a session, live or not; callers check `revoked_at` and `expires_at`.
    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        let row = sqlx::query(concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Revokes a session and its refresh tokens. Returns true if and only if the session had not
    /// been revoked before; `NotFound` if it does not exist.
    pub async fn revoke_session(&self, id: &str, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 && session_in(&mut tx, id).await?.is_none() {
            return Err(StoreError::NotFound(format!("session {id}")));
        }
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Revokes every session of the user and their refresh tokens; returns how many sessions were
    /// live.
    pub async fn revoke_sessions_of_user(&self, user_id: &str, now: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL \
             AND session_id IN (SELECT id FROM sessions WHERE user_id = $1)",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Revokes every session opened with the credential and their refresh tokens; returns how
    /// many sessions were live.
    pub async fn revoke_sessions_of_credential(&self, credential_id: &str, now: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let revoked = revoke_sessions_of_credential_in(&mut tx, credential_id, now).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Stores a refresh token (by hash) in a family bound to one session. Refused with
    /// `Conflict` if the session is revoked or expired at `now`, if the family has been revoked
    /// (so a successor issued while a reuse was being detected is refused, not left live), or if
    /// the family belongs to another session; `NotFound` if the session does not exist.
    pub async fn insert_refresh_token(
        &self,
        token_hash: &str,
        family_id: &str,
        session_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Lock the session row (a no-op under SQLite's BEGIN IMMEDIATE) so a concurrent reuse
        // detection, which revokes this session, is ordered before or after this insert.
        sqlx::query("UPDATE sessions SET revoked_at = revoked_at WHERE id = $1")
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        let Some(session) = session_in(&mut tx, session_id).await? else {
            return Err(StoreError::NotFound(format!("session {session_id}")));
        };
        if session.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!("session {session_id} is revoked")));
        }
        if session.expires_at <= now {
            return Err(StoreError::Conflict(format!("session {session_id} has expired")));
        }
        let spoiled: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM refresh_tokens WHERE family_id = $1 AND (session_id <> $2 OR revoked_at IS NOT NULL)",
        )
        .bind(family_id)
        .bind(session_id)
        .fetch_one(&mut *tx)
        .await?;
        if spoiled > 0 {
            return Err(StoreError::Conflict(format!(
                "refresh token family {family_id} is revoked or belongs to another session"
            )));
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, session_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(family_id)
        .bind(session_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, "refresh token"))?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends a refresh token (see [`RefreshUse`]). The first use of a live token marks it used
    /// and returns `Valid`; any later use returns `Reused` and revokes the family, its session and
    /// the session's other tokens, in the same transaction. A live token whose session has been
    /// revoked or has expired is reported `Revoked` / `Expired` and left unspent.
    pub async fn use_refresh_token(&self, token_hash: &str, now: i64) -> Result<RefreshUse> {
        let mut tx = self.begin_write().await?;
        // Claim first: a conditional UPDATE succeeds for exactly one of any concurrent uses
        // (under PostgreSQL the losers wait on the row lock, then see it used).
        let claimed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $2 \
             WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
             RETURNING family_id, session_id",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = claimed {
            let family_id: String = row.try_get("family_id")?;
            let session_id: String = row.try_get("session_id")?;
            let session = session_in(&mut tx, &session_id).await?;
            let outcome = match session {
                Some(s) if s.revoked_at.is_none() && now < s.expires_at => {
                    tx.commit().await?;
                    return Ok(RefreshUse::Valid { family_id, session_id });
                }
                Some(s) if s.revoked_at.is_none() => RefreshUse::Expired,
                _ => RefreshUse::Revoked { family_id },
            };
            tx.rollback().await?;
            return Ok(outcome);
        }

        let row = sqlx::query("SELECT family_id, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(RefreshUse::Unknown);
        };
        let family_id: String = row.try_get("family_id")?;
        let used_at: Option<i64> = row.try_get("used_at")?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        let outcome = if used_at.is_some() {
            // Reuse means two parties hold the chain: end all of it, whoever is legitimate.
            revoke_family_in(&mut tx, &family_id, now).await?;
            RefreshUse::Reused { family_id }
        } else if revoked_at.is_some() {
            RefreshUse::Revoked { family_id }
        } else {
            RefreshUse::Expired
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Revokes every token of the family, the session it belongs to and that session's other
    /// tokens. An unknown family is a no-op.
    pub async fn revoke_family(&self, family_id: &str, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        revoke_family_in(&mut tx, family_id, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn session_in(conn: &mut AnyConnection, id: &str) -> Result<Option<Session>> {
    let row = sqlx::query(concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(session_from_row).transpose()
}
