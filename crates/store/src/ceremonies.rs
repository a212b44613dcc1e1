//! Single-use things that start a sign-in or an enrollment: WebAuthn ceremony state and
//! enrollment links. Each is consumed by one atomic statement, so a replay can never succeed.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::write_error;
use crate::{Ceremony, EnrollLink, Result, Store};

macro_rules! enroll_columns {
    () => {
        "token_hash, username, role, vault, user_id, created_by, created_at, expires_at, used_at"
    };
}

fn ceremony_from_row(row: &AnyRow) -> Result<Ceremony> {
    Ok(Ceremony {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        state_json: row.try_get("state_json")?,
        subject: row.try_get("subject")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn enroll_from_row(row: &AnyRow) -> Result<EnrollLink> {
    Ok(EnrollLink {
        token_hash: row.try_get("token_hash")?,
        username: row.try_get("username")?,
        role: row.try_get("role")?,
        vault: row.try_get("vault")?,
        user_id: row.try_get("user_id")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
    })
}

impl Store {
    /// Stores ceremony state. `Conflict` if the id is taken.
    pub async fn put_ceremony(&self, c: &Ceremony) -> Result<()> {
        sqlx::query("INSERT INTO ceremonies (id, kind, state_json, subject, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(c.id.as_str())
            .bind(c.kind.as_str())
            .bind(c.state_json.as_str())
            .bind(c.subject.as_str())
            .bind(c.expires_at)
            .execute(&self.pool)
            .await
            .map_err(|e| write_error(e, "ceremony"))?;
        Ok(())
    }

    /// Consumes ceremony state: returns it if and only if it existed, had this `kind` and had not
    /// expired at `now`. The row is deleted in every case, by one `DELETE … RETURNING`, so of any
    /// number of concurrent takes at most one gets the state, and a wrong-kind or late attempt
    /// also burns it.
    pub async fn take_ceremony(&self, id: &str, kind: &str, now: i64) -> Result<Option<Ceremony>> {
        let row =
            sqlx::query("DELETE FROM ceremonies WHERE id = $1 RETURNING id, kind, state_json, subject, expires_at")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(ceremony) = row.as_ref().map(ceremony_from_row).transpose()? else {
            return Ok(None);
        };
        Ok((ceremony.kind == kind && now < ceremony.expires_at).then_some(ceremony))
    }

    /// Deletes ceremony state that expired at or before `now`; returns how many rows went.
    pub async fn purge_expired_ceremonies(&self, now: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM ceremonies WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Stores an enrollment link. `Conflict` if the token hash exists; `NotFound` if `user_id`
    /// names no user.
    pub async fn create_enroll_link(&self, link: &EnrollLink) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO enroll_links (",
            enroll_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(link.token_hash.as_str())
        .bind(link.username.as_str())
        .bind(link.role.as_str())
        .bind(link.vault.as_deref())
        .bind(link.user_id.as_deref())
        .bind(link.created_by.as_str())
        .bind(link.created_at)
        .bind(link.expires_at)
        .bind(link.used_at)
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "enrollment link"))?;
        Ok(())
    }

    /// Reads an enrollment link, used or not; callers check `used_at` and `expires_at`, and only
    /// [`Store::consume_enroll_link`] decides.
    pub async fn enroll_link(&self, token_hash: &str) -> Result<Option<EnrollLink>> {
        let row = sqlx::query(concat!("SELECT ", enroll_columns!(), " FROM enroll_links WHERE token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(enroll_from_row).transpose()
    }

    /// Marks the link used at `now`. Returns true if and only if it existed, was unused and had
    /// not expired; one conditional `UPDATE`, so it returns true once at most.
    pub async fn consume_enroll_link(&self, token_hash: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE enroll_links SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
