//! Vault records: name, kind and the policy that decides what a restore approval needs.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::write_error;
use crate::{Result, Store, StoreError, Vault};

fn vault_from_row(row: &AnyRow) -> Result<Vault> {
    Ok(Vault {
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        policy_json: row.try_get("policy_json")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
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
        let row = sqlx::query("SELECT name, kind, policy_json, created_at, created_by FROM vaults WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vault_from_row).transpose()
    }

    /// Every vault, by name.
    pub async fn list_vaults(&self) -> Result<Vec<Vault>> {
        let rows = sqlx::query("SELECT name, kind, policy_json, created_at, created_by FROM vaults ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
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
