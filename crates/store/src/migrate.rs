//! A tiny migration runner, so the same versioned SQL files serve SQLite and PostgreSQL.
//!
//! Why not `sqlx::migrate!`: its `Migrate` implementation is per driver (the Any driver only
//! forwards to it), it pulls in the `migrate` and `macros` features (sqlx-macros-core with every
//! driver's compile-time code) and its bookkeeping table records wall-clock times, while this
//! crate never reads the clock. What we need is small: apply each embedded file once, in a
//! transaction, in order, and record it in `schema_migrations`.
//!
//! `schema_migrations (version BIGINT PRIMARY KEY, name TEXT, checksum TEXT)` holds one row per
//! applied file; `checksum` (FNV-1a 64 of the SQL text) catches a released migration that was
//! edited afterwards. A database whose newest version is unknown to this build is refused rather
//! than used half-understood.

use sqlx::{AnyPool, Row};

use crate::error::{Result, StoreError};

/// One embedded migration. Versions start at 1 and increase by 1.
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Every migration this build knows, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("../migrations/0001_initial.sql") },
    Migration { version: 2, name: "vaults", sql: include_str!("../migrations/0002_vaults.sql") },
    Migration { version: 3, name: "approvals", sql: include_str!("../migrations/0003_approvals.sql") },
    Migration { version: 4, name: "audit_log", sql: include_str!("../migrations/0004_audit_log.sql") },
    Migration { version: 5, name: "critical", sql: include_str!("../migrations/0005_critical.sql") },
    Migration { version: 6, name: "flags", sql: include_str!("../migrations/0006_flags.sql") },
    Migration { version: 7, name: "hygiene", sql: include_str!("../migrations/0007_hygiene.sql") },
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL)";

/// Brings the schema up to date. `begin` is the statement that opens a write transaction on this
/// backend (see `Store::begin_write`).
pub(crate) async fn run(pool: &AnyPool, begin: &'static str) -> Result<()> {
    sqlx::raw_sql(CREATE_TABLE).execute(pool).await.map_err(|e| StoreError::Migration(e.to_string()))?;

    let newest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations").fetch_one(pool).await?;
    if let Some(newest) = newest {
        if newest > newest_known {
            return Err(StoreError::Migration(format!(
                "database schema version {newest} is newer than this build's ({newest_known})"
            )));
        }
    }

    for m in MIGRATIONS {
        // One transaction per file: the check, the DDL and the record commit together, and a
        // second process opening the same database waits and then sees the file as applied.
        let mut tx = pool.begin_with(begin).await?;
        let applied = sqlx::query("SELECT checksum FROM schema_migrations WHERE version = $1")
            .bind(m.version)
            .fetch_optional(&mut *tx)
            .await?;
        match applied {
            Some(row) => {
                let sum: String = row.try_get("checksum")?;
                if sum != checksum(m.sql) {
                    return Err(StoreError::Migration(format!(
                        "migration {} ({}) was changed after it had been applied",
                        m.version, m.name
                    )));
                }
                tx.rollback().await?;
            }
            None => {
                sqlx::raw_sql(m.sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::Migration(format!("migration {} ({}) failed: {e}", m.version, m.name)))?;
                sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
                    .bind(m.version)
                    .bind(m.name)
                    .bind(checksum(m.sql))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
    }
    Ok(())
}

/// FNV-1a 64 of the text, in hex: stable across Rust versions and platforms, unlike `DefaultHasher`.
fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_start_at_one_and_increase_by_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "migration {}", m.name);
        }
    }

    #[test]
    fn checksum_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_eq!(checksum("a"), "af63dc4c8601ec8c");
    }
}
