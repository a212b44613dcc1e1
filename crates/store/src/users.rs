//! Users and their role assignments.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::write_error;
use crate::{get_flag, vault_key, Result, RoleAssignment, Store, StoreError, User};

macro_rules! user_columns {
    () => {
        "id, username, display_name, created_at, expires_at, disabled"
    };
}

fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        disabled: get_flag(row, "disabled")?,
    })
}

fn role_from_row(row: &AnyRow) -> Result<RoleAssignment> {
    let vault: String = row.try_get("vault")?;
    Ok(RoleAssignment {
        user_id: row.try_get("user_id")?,
        role: row.try_get("role")?,
        vault: if vault.is_empty() { None } else { Some(vault) },
    })
}

impl Store {
    /// Adds a user. `Conflict` if the id or the username is already taken.
    pub async fn create_user(&self, user: &User) -> Result<()> {
        let inserted =
            sqlx::query(concat!("INSERT INTO users (", user_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6)"))
                .bind(user.id.as_str())
                .bind(user.username.as_str())
                .bind(user.display_name.as_str())
                .bind(user.created_at)
                .bind(user.expires_at)
                .bind(i64::from(user.disabled))
                .execute(&self.pool)
                .await;
        let err = match inserted {
            Ok(_) => return Ok(()),
            Err(e) => write_error(e, "user"),
        };
        if !matches!(err, StoreError::Conflict(_)) {
            return Err(err);
        }
        // Say which of the two unique keys was hit: the caller reports "username taken" to people.
        if self.user_by_name(&user.username).await?.is_some() {
            return Err(StoreError::Conflict(format!("username {:?} is taken", user.username)));
        }
        Err(StoreError::Conflict(format!("user id {} already exists", user.id)))
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Looks a user up by exact username.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE username = $1"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Every user, ordered by username.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users ORDER BY username"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Disables or re-enables a user. `NotFound` if there is no such user.
    ///
    /// This does not end the user's sessions: callers disabling a user also call
    /// [`Store::revoke_sessions_of_user`] (which takes the `now` this method has no use for).
    pub async fn set_user_disabled(&self, id: &str, disabled: bool) -> Result<()> {
        let done = sqlx::query("UPDATE users SET disabled = $2 WHERE id = $1")
            .bind(id)
            .bind(i64::from(disabled))
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    /// Sets or clears the instant after which the user no longer counts as active.
    pub async fn set_user_expiry(&self, id: &str, expires_at: Option<i64>) -> Result<()> {
        let done = sqlx::query("UPDATE users SET expires_at = $2 WHERE id = $1")
            .bind(id)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    /// Grants a role; granting one the user already holds is a no-op. `NotFound` if the user
    /// does not exist, `Invalid` for `vault: Some("")`.
    pub async fn add_role(&self, assignment: &RoleAssignment) -> Result<()> {
        sqlx::query("INSERT INTO role_assignments (user_id, role, vault) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(assignment.user_id.as_str())
            .bind(assignment.role.as_str())
            .bind(vault_key(assignment.vault.as_deref())?)
            .execute(&self.pool)
            .await
            .map_err(|e| write_error(e, "role assignment"))?;
        Ok(())
    }

    /// Withdraws a role. Returns true if and only if the user held it.
    pub async fn remove_role(&self, assignment: &RoleAssignment) -> Result<bool> {
        let done = sqlx::query("DELETE FROM role_assignments WHERE user_id = $1 AND role = $2 AND vault = $3")
            .bind(assignment.user_id.as_str())
            .bind(assignment.role.as_str())
            .bind(vault_key(assignment.vault.as_deref())?)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The user's roles, ordered by role then vault (every-vault assignments first).
    pub async fn roles_of(&self, user_id: &str) -> Result<Vec<RoleAssignment>> {
        let rows =
            sqlx::query("SELECT user_id, role, vault FROM role_assignments WHERE user_id = $1 ORDER BY role, vault")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(role_from_row).collect()
    }

    /// How many users hold `role` for every vault (`vault: None`) and are active at `now`: not
    /// disabled and not past their expiry. Vault-scoped assignments do not count, so "is this the
    /// last Owner?" cannot be answered by someone who owns only one vault.
    pub async fn count_active_users_with_role(&self, role: &str, now: i64) -> Result<i64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT u.id) FROM users u JOIN role_assignments r ON r.user_id = u.id \
             WHERE r.role = $1 AND r.vault = '' AND u.disabled = 0 AND (u.expires_at IS NULL OR u.expires_at > $2)",
        )
        .bind(role)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }
}
