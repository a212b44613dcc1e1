//! Device authorization grant (RFC 8628) state: the user approves or denies a code in the
//! browser while the device polls; polling too fast earns `slow_down`, and an approval is handed
//! out exactly once.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::write_error;
use crate::{DeviceCode, DevicePoll, DeviceStatus, Result, Store, StoreError};

macro_rules! device_columns {
    () => {
        "device_code_hash, user_code, client_id, scope, created_at, expires_at, poll_interval, last_poll_at, \
         status, session_id, user_id"
    };
}

/// RFC 8628 §3.5: after `slow_down` "the interval MUST be increased by 5 seconds for this and
/// all subsequent requests".
const SLOW_DOWN_STEP: i64 = 5;

fn device_from_row(row: &AnyRow) -> Result<DeviceCode> {
    Ok(DeviceCode {
        device_code_hash: row.try_get("device_code_hash")?,
        user_code: row.try_get("user_code")?,
        client_id: row.try_get("client_id")?,
        scope: row.try_get("scope")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        interval: row.try_get("poll_interval")?,
        last_poll_at: row.try_get("last_poll_at")?,
        status: row.try_get("status")?,
        session_id: row.try_get("session_id")?,
        user_id: row.try_get("user_id")?,
    })
}

impl Store {
    /// Stores a new device authorization. `Conflict` if the device code hash or the user code is
    /// taken (the caller draws another user code); `Invalid` for an unknown status.
    pub async fn create_device_code(&self, d: &DeviceCode) -> Result<()> {
        if DeviceStatus::parse(&d.status).is_none() {
            return Err(StoreError::Invalid(format!("unknown device code status {:?}", d.status)));
        }
        sqlx::query(concat!(
            "INSERT INTO device_codes (",
            device_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(d.device_code_hash.as_str())
        .bind(d.user_code.as_str())
        .bind(d.client_id.as_str())
        .bind(d.scope.as_str())
        .bind(d.created_at)
        .bind(d.expires_at)
        .bind(d.interval)
        .bind(d.last_poll_at)
        .bind(d.status.as_str())
        .bind(d.session_id.as_deref())
        .bind(d.user_id.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "device code"))?;
        Ok(())
    }

    pub async fn device_by_user_code(&self, user_code: &str) -> Result<Option<DeviceCode>> {
        let row = sqlx::query(concat!("SELECT ", device_columns!(), " FROM device_codes WHERE user_code = $1"))
            .bind(user_code)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    pub async fn device_by_hash(&self, device_code_hash: &str) -> Result<Option<DeviceCode>> {
        let row = sqlx::query(concat!("SELECT ", device_columns!(), " FROM device_codes WHERE device_code_hash = $1"))
            .bind(device_code_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Binds a pending, unexpired code to the signed-in user who acts on it first: only that
    /// user may then approve or deny it. True if the code is now (or already was) theirs.
    pub async fn claim_device(&self, user_code: &str, user_id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE device_codes SET user_id = $2 WHERE user_code = $1 AND status = 'pending' \
             AND expires_at > $3 AND (user_id IS NULL OR user_id = $2)",
        )
        .bind(user_code)
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "device claim"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Approves the code for `user_id`, whose tokens will hang off `session_id`. Returns true if
    /// and only if the code was pending and unexpired at `now` and not claimed by someone else
    /// (one conditional `UPDATE`, so two approvals cannot both win). `NotFound` if the user or
    /// session does not exist.
    pub async fn approve_device(&self, user_code: &str, user_id: &str, session_id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE device_codes SET status = 'approved', user_id = $2, session_id = $3 \
             WHERE user_code = $1 AND status = 'pending' AND expires_at > $4 AND (user_id IS NULL OR user_id = $2)",
        )
        .bind(user_code)
        .bind(user_id)
        .bind(session_id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "device approval"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Denies the code as `user_id`. Returns true if and only if it was pending, unexpired at
    /// `now` and claimed by `user_id` (see [`Store::claim_device`]).
    pub async fn deny_device(&self, user_code: &str, user_id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE device_codes SET status = 'denied' WHERE user_code = $1 AND status = 'pending' AND expires_at > $2 \
             AND user_id = $3",
        )
        .bind(user_code)
        .bind(now)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// One token-endpoint poll (see [`DevicePoll`]), in one write transaction. In order: unknown
    /// code; already consumed; expired at `now`; polled less than `interval` seconds after the
    /// previous poll (`SlowDown`, and the interval grows by 5 s); otherwise the status, where an
    /// approval is turned into `consumed` so it is returned once. Every poll that gets past the
    /// expiry check is recorded as the last poll.
    pub async fn poll_device(&self, device_code_hash: &str, now: i64) -> Result<DevicePoll> {
        let mut tx = self.begin_write().await?;
        // Row lock for PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises): concurrent polls
        // of one code are ordered, so the interval and the one-time approval hold.
        sqlx::query("UPDATE device_codes SET poll_interval = poll_interval WHERE device_code_hash = $1")
            .bind(device_code_hash)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(concat!("SELECT ", device_columns!(), " FROM device_codes WHERE device_code_hash = $1"))
            .bind(device_code_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(device) = row.as_ref().map(device_from_row).transpose()? else {
            return Ok(DevicePoll::Unknown);
        };
        let Some(status) = DeviceStatus::parse(&device.status) else {
            return Err(StoreError::Database(format!("device code has unknown status {:?}", device.status)));
        };
        if status == DeviceStatus::Consumed {
            return Ok(DevicePoll::Consumed);
        }
        if now >= device.expires_at {
            return Ok(DevicePoll::Expired);
        }
        if device.last_poll_at.is_some_and(|last| now - last < device.interval) {
            sqlx::query(
                "UPDATE device_codes SET poll_interval = poll_interval + $2, last_poll_at = $3 WHERE device_code_hash = $1",
            )
            .bind(device_code_hash)
            .bind(SLOW_DOWN_STEP)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(DevicePoll::SlowDown);
        }
        sqlx::query("UPDATE device_codes SET last_poll_at = $2 WHERE device_code_hash = $1")
            .bind(device_code_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let outcome = match status {
            DeviceStatus::Pending => DevicePoll::Pending,
            DeviceStatus::Denied => DevicePoll::Denied,
            DeviceStatus::Consumed => DevicePoll::Consumed,
            DeviceStatus::Approved => {
                let (Some(user_id), Some(session_id)) = (device.user_id, device.session_id) else {
                    return Err(StoreError::Database("approved device code without user or session".into()));
                };
                sqlx::query("UPDATE device_codes SET status = 'consumed' WHERE device_code_hash = $1")
                    .bind(device_code_hash)
                    .execute(&mut *tx)
                    .await?;
                DevicePoll::Approved { user_id, session_id }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}
