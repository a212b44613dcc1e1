//! Vault records: name, kind and the policy that decides what a restore approval needs.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::write_error;
use crate::{DeletedSnapshot, Result, Store, StoreError, Vault};

fn vault_from_row(row: &AnyRow) -> Result<Vault> {
    Ok(Vault {
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        policy_json: row.try_get("policy_json")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        deleted_at: row.try_get("deleted_at")?,
        deleted_by: row.try_get("deleted_by")?,
        purge_at: row.try_get("purge_at")?,
    })
}

const VAULT_COLUMNS: &str = "name, kind, policy_json, created_at, created_by, deleted_at, deleted_by, purge_at";

fn deleted_from_row(row: &AnyRow) -> Result<DeletedSnapshot> {
    Ok(DeletedSnapshot {
        vault: row.try_get("vault")?,
        snapshot: row.try_get("snapshot")?,
        deleted_at: row.try_get("deleted_at")?,
        deleted_by: row.try_get("deleted_by")?,
        purge_at: row.try_get("purge_at")?,
    })
}

impl Store {
    /// Adds a vault. `Conflict` if the name is taken, `Invalid` for an unknown kind.
    pub async fn create_vault(&self, v: &Vault) -> Result<()> {
        if v.kind != "test" && v.kind != "production" {
            return Err(StoreError::Invalid(format!("vault kind {:?}", v.kind)));
        }
        sqlx::query("INSERT INTO vaults (name, kind, policy_json, created_at, created_by) VALUES ($1, $2, $3, $4, $5)")
            .bind(v.name.as_str())
            .bind(v.kind.as_str())
            .bind(v.policy_json.as_str())
            .bind(v.created_at)
            .bind(v.created_by.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| write_error(e, "vault"))?;
        Ok(())
    }

    /// One vault by name.
    pub async fn vault(&self, name: &str) -> Result<Option<Vault>> {
        let row = sqlx::query(&format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vault_from_row).transpose()
    }

    /// Every vault, by name.
    pub async fn list_vaults(&self) -> Result<Vec<Vault>> {
        let rows =
            sqlx::query(&format!("SELECT {VAULT_COLUMNS} FROM vaults ORDER BY name")).fetch_all(&self.pool).await?;
        rows.iter().map(vault_from_row).collect()
    }

    /// Replaces a vault's policy. `NotFound` if there is no such vault.
    pub async fn set_vault_policy(&self, name: &str, policy_json: &str) -> Result<()> {
        let done = sqlx::query("UPDATE vaults SET policy_json = $2 WHERE name = $1")
            .bind(name)
            .bind(policy_json)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("vault {name}")));
        }
        Ok(())
    }

    /// Soft-deletes a vault in use: true if and only if this call did.
    pub async fn soft_delete_vault(&self, name: &str, by: &str, now: i64, purge_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE vaults SET deleted_at = $2, deleted_by = $3, purge_at = $4 WHERE name = $1 AND deleted_at IS NULL",
        )
        .bind(name)
        .bind(now)
        .bind(by)
        .bind(purge_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Brings back a soft-deleted vault whose purge is not due at `now`: true if and only if
    /// this call did (a vault due for purge may be being purged; it stays gone).
    pub async fn undelete_vault(&self, name: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE vaults SET deleted_at = NULL, deleted_by = NULL, purge_at = NULL \
             WHERE name = $1 AND deleted_at IS NOT NULL AND purge_at > $2",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deleted vaults whose recovery period is over.
    pub async fn vaults_due_for_purge(&self, now: i64) -> Result<Vec<Vault>> {
        let rows = sqlx::query(&format!(
            "SELECT {VAULT_COLUMNS} FROM vaults WHERE deleted_at IS NOT NULL AND purge_at <= $1 ORDER BY name"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(vault_from_row).collect()
    }

    /// Removes a deleted vault's records for good (its snapshot tombstones and the roles held
    /// on it): true if and only if it was still deleted and due at `now`.
    pub async fn purge_vault(&self, name: &str, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let due = sqlx::query("SELECT name FROM vaults WHERE name = $1 AND deleted_at IS NOT NULL AND purge_at <= $2")
            .bind(name)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !due {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM deleted_snapshots WHERE vault = $1",
            "DELETE FROM role_assignments WHERE vault = $1",
            "DELETE FROM vaults WHERE name = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Soft-deletes a snapshot: true if and only if this call did (false if it already was).
    pub async fn soft_delete_snapshot(&self, d: &DeletedSnapshot) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO deleted_snapshots (vault, snapshot, deleted_at, deleted_by, purge_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (vault, snapshot) DO NOTHING",
        )
        .bind(d.vault.as_str())
        .bind(d.snapshot.as_str())
        .bind(d.deleted_at)
        .bind(d.deleted_by.as_str())
        .bind(d.purge_at)
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "deleted snapshot"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Brings back a soft-deleted snapshot whose purge is not due at `now`: true if and only if
    /// this call did.
    pub async fn undelete_snapshot(&self, vault: &str, snapshot: &str, now: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM deleted_snapshots WHERE vault = $1 AND snapshot = $2 AND purge_at > $3")
            .bind(vault)
            .bind(snapshot)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets a purged snapshot's tombstone (its file is gone): true if there was one.
    pub async fn drop_snapshot_tombstone(&self, vault: &str, snapshot: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM deleted_snapshots WHERE vault = $1 AND snapshot = $2")
            .bind(vault)
            .bind(snapshot)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets the one-time flag `name`: true if and only if this call set it.
    pub async fn claim_flag(&self, name: &str, now: i64) -> Result<bool> {
        let done = sqlx::query("INSERT INTO server_flags (name, set_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// When flag `name` was set, if it was.
    pub async fn flag(&self, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT set_at FROM server_flags WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("set_at")?),
            None => None,
        })
    }

    /// A vault's soft-deleted snapshots, oldest deletion first.
    pub async fn deleted_snapshots(&self, vault: &str) -> Result<Vec<DeletedSnapshot>> {
        let rows = sqlx::query(
            "SELECT vault, snapshot, deleted_at, deleted_by, purge_at FROM deleted_snapshots WHERE vault = $1 \
             ORDER BY deleted_at, snapshot",
        )
        .bind(vault)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deleted_from_row).collect()
    }

    /// Soft-deleted snapshots (of vaults in use) whose recovery period is over.
    pub async fn snapshots_due_for_purge(&self, now: i64) -> Result<Vec<DeletedSnapshot>> {
        let rows = sqlx::query(
            "SELECT d.vault, d.snapshot, d.deleted_at, d.deleted_by, d.purge_at FROM deleted_snapshots d \
             JOIN vaults v ON v.name = d.vault WHERE v.deleted_at IS NULL AND d.purge_at <= $1 ORDER BY d.purge_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deleted_from_row).collect()
    }

    /// Every role assignment (for `role list`), ordered by user, role, vault.
    pub async fn all_roles(&self) -> Result<Vec<crate::RoleAssignment>> {
        let rows = sqlx::query("SELECT user_id, role, vault FROM role_assignments ORDER BY user_id, role, vault")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let vault: String = row.try_get("vault")?;
                Ok(crate::RoleAssignment {
                    user_id: row.try_get("user_id")?,
                    role: row.try_get("role")?,
                    vault: if vault.is_empty() { None } else { Some(vault) },
                })
            })
            .collect()
    }
}
