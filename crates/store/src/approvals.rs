//! Approvals: created pending, decided at most once (atomically), then their grant issued once.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::write_error;
use crate::{Approval, Result, Store, Vote};

const COLUMNS: &str = "id, kind, vault, operation_json, digest, requester_id, requester_session, created_at, expires_at, status, approver_id, approved_at, evidence_json, grant_hash, required, result_json";

fn from_row(row: &AnyRow) -> Result<Approval> {
    Ok(Approval {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        vault: row.try_get("vault")?,
        operation_json: row.try_get("operation_json")?,
        digest: row.try_get("digest")?,
        requester_id: row.try_get("requester_id")?,
        requester_session: row.try_get("requester_session")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        status: row.try_get("status")?,
        approver_id: row.try_get("approver_id")?,
        approved_at: row.try_get("approved_at")?,
        evidence_json: row.try_get("evidence_json")?,
        grant_hash: row.try_get("grant_hash")?,
        required: row.try_get("required")?,
        result_json: row.try_get("result_json")?,
    })
}

impl Store {
    /// Records a new pending approval.
    pub async fn create_approval(&self, a: &Approval) -> Result<()> {
        sqlx::query(
            "INSERT INTO approvals (id, kind, vault, operation_json, digest, requester_id, requester_session, created_at, expires_at, status, required) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10)",
        )
        .bind(a.id.as_str())
        .bind(a.kind.as_str())
        .bind(a.vault.as_str())
        .bind(a.operation_json.as_str())
        .bind(a.digest.as_str())
        .bind(a.requester_id.as_str())
        .bind(a.requester_session.as_str())
        .bind(a.created_at)
        .bind(a.expires_at)
        .bind(a.required)
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "approval"))?;
        Ok(())
    }

    /// One approval.
    pub async fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Pending approvals, newest first.
    pub async fn pending_approvals(&self, now: i64) -> Result<Vec<Approval>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM approvals WHERE status = 'pending' AND expires_at > $1 ORDER BY created_at DESC"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Decides a pending, unexpired approval whose digest is `digest`: true if and only if this
    /// call decided it (a second decision, a late one or one for another digest changes nothing).
    pub async fn decide_approval(
        &self,
        id: &str,
        digest: &str,
        approve: bool,
        approver_id: &str,
        evidence_json: &str,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE approvals SET status = $3, approver_id = $4, approved_at = $5, evidence_json = $6 \
             WHERE id = $1 AND digest = $2 AND status = 'pending' AND expires_at > $5",
        )
        .bind(id)
        .bind(digest)
        .bind(if approve { "approved" } else { "denied" })
        .bind(approver_id)
        .bind(now)
        .bind(evidence_json)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Issues the grant of an approved approval once: true if and only if `grant_hash` was set now.
    pub async fn issue_grant(&self, id: &str, grant_hash: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE approvals SET grant_hash = $2, status = 'consumed' WHERE id = $1 AND status = 'approved' AND grant_hash IS NULL")
            .bind(id)
            .bind(grant_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The approval a grant belongs to.
    pub async fn approval_by_grant(&self, grant_hash: &str) -> Result<Option<Approval>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE grant_hash = $1"))
            .bind(grant_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Records a vote on a pending, unexpired approval with digest `digest`: true if and only
    /// if it was recorded now (a second vote by the same person, or one on a decided, expired
    /// or different operation, records nothing).
    pub async fn add_vote(&self, v: &Vote, digest: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO approval_votes (approval_id, user_id, role, evidence_json, created_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM approvals WHERE id = $1 AND digest = $6 \
             AND status = 'pending' AND expires_at > $5) ON CONFLICT (approval_id, user_id) DO NOTHING",
        )
        .bind(v.approval_id.as_str())
        .bind(v.user_id.as_str())
        .bind(v.role.as_str())
        .bind(v.evidence_json.as_str())
        .bind(v.created_at)
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The votes on an approval, oldest first.
    pub async fn votes(&self, approval_id: &str) -> Result<Vec<Vote>> {
        let rows = sqlx::query(
            "SELECT approval_id, user_id, role, evidence_json, created_at FROM approval_votes \
             WHERE approval_id = $1 ORDER BY created_at, user_id",
        )
        .bind(approval_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Vote {
                    approval_id: row.try_get("approval_id")?,
                    user_id: row.try_get("user_id")?,
                    role: row.try_get("role")?,
                    evidence_json: row.try_get("evidence_json")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Marks a pending, unexpired approval approved once the requester has voted and at least
    /// `required` approvers have: true if and only if this call did (one statement, so of
    /// concurrent last votes exactly one sees true).
    pub async fn complete_approval(&self, id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE approvals SET status = 'approved', approved_at = $2 \
             WHERE id = $1 AND status = 'pending' AND expires_at > $2 \
             AND EXISTS (SELECT 1 FROM approval_votes v WHERE v.approval_id = $1 AND v.role = 'requester') \
             AND (SELECT COUNT(*) FROM approval_votes v WHERE v.approval_id = $1 AND v.role = 'approver') >= required",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims an approved operation for running: true for exactly one caller.
    pub async fn claim_approved(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE approvals SET status = 'consumed' WHERE id = $1 AND status = 'approved'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records what running a claimed operation did.
    pub async fn set_approval_result(&self, id: &str, result_json: &str) -> Result<()> {
        sqlx::query("UPDATE approvals SET result_json = $2 WHERE id = $1")
            .bind(id)
            .bind(result_json)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Critical operations approved but not run to the end (claimed by a process that died,
    /// or not claimed yet), oldest first.
    pub async fn unfinished_critical(&self) -> Result<Vec<Approval>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM approvals WHERE kind = 'critical' AND status IN ('approved', 'consumed') \
             AND result_json IS NULL ORDER BY approved_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }
}
