//! The records the store keeps, as plain data: what goes in is what comes out.

/// A person (or automation account) known to the identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// A UUID in text form; the caller draws it.
    pub id: String,
    /// Unique, compared byte for byte (normalising case or Unicode is the caller's job).
    pub username: String,
    pub display_name: String,
    pub created_at: i64,
    /// After this instant (unix seconds) the account no longer counts as active.
    pub expires_at: Option<i64>,
    pub disabled: bool,
}

/// One role held by a user, either everywhere (`vault: None`) or on one vault.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleAssignment {
    pub user_id: String,
    pub role: String,
    /// `None` = every vault. `Some("")` is refused, since the schema stores "every vault" as ''.
    pub vault: Option<String>,
}

/// A WebAuthn credential (passkey) registered to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// The credential id, base64url without padding.
    pub id: String,
    pub user_id: String,
    /// A name the user chose ("YubiKey 5C", "laptop").
    pub name: String,
    /// The WebAuthn library's serialised credential (public key and its bookkeeping).
    pub credential_json: String,
    /// The authenticator's signature counter as last seen.
    pub counter: i64,
    pub aaguid: String,
    pub attestation_format: String,
    /// Whether the attestation chain ended in a configured, trusted root.
    pub attestation_trusted: bool,
    pub backup_eligible: bool,
    pub backup_state: bool,
    /// A JSON array of transport names, as text.
    pub transports: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub locked_at: Option<i64>,
    pub lock_reason: Option<String>,
}

impl CredentialRecord {
    /// True if and only if the credential may be used to sign in: neither revoked nor locked.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none() && self.locked_at.is_none()
    }
}

/// Server-side WebAuthn ceremony state, consumed once by [`crate::Store::take_ceremony`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceremony {
    pub id: String,
    /// What the state is for ("register", "authenticate", "approve-device", …).
    pub kind: String,
    pub state_json: String,
    /// Whom the ceremony is about: a user id, an enrollment token hash, a device user code.
    pub subject: String,
    pub expires_at: i64,
}

/// A one-time enrollment link; only a hash of its token is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollLink {
    pub token_hash: String,
    pub username: String,
    pub role: String,
    pub vault: Option<String>,
    /// Set when the link adds a credential to an existing user (re-enrollment, recovery).
    pub user_id: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// A signed-in session; access and refresh tokens hang off it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    /// The credential whose assertion opened the session.
    pub credential_id: String,
    pub auth_time: i64,
    /// A JSON array of RFC 8176 method references, as text.
    pub amr: String,
    pub acr: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// The outcome of presenting a refresh token to [`crate::Store::use_refresh_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshUse {
    /// First use of a live token: it is now spent; the caller issues its successor in the family.
    Valid {
        family_id: String,
        session_id: String,
    },
    /// The token had been used before: it was stolen or replayed. The whole family and its
    /// session have been revoked.
    Reused {
        family_id: String,
    },
    /// The token was revoked (with its family or session) without having been used.
    Revoked {
        family_id: String,
    },
    Expired,
    Unknown,
}

/// A device authorization (RFC 8628) in progress; the device code is stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCode {
    pub device_code_hash: String,
    /// The short code the user types or confirms; unique among stored device codes.
    pub user_code: String,
    pub client_id: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Minimum seconds between polls; grows by 5 at each `slow_down`.
    pub interval: i64,
    pub last_poll_at: Option<i64>,
    /// `pending`, `approved`, `denied` or `consumed` (see [`DeviceStatus`]).
    pub status: String,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
}

/// The values [`DeviceCode::status`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    Consumed,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Denied => "denied",
            DeviceStatus::Consumed => "consumed",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceStatus> {
        match s {
            "pending" => Some(DeviceStatus::Pending),
            "approved" => Some(DeviceStatus::Approved),
            "denied" => Some(DeviceStatus::Denied),
            "consumed" => Some(DeviceStatus::Consumed),
            _ => None,
        }
    }
}

/// The outcome of one token-endpoint poll with a device code ([`crate::Store::poll_device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevicePoll {
    /// `authorization_pending`.
    Pending,
    /// `slow_down`: polled sooner than the interval allows; the interval has grown by 5 seconds.
    SlowDown,
    /// Approved; returned once, after which the code is consumed.
    Approved { user_id: String, session_id: String },
    /// `access_denied`.
    Denied,
    /// `expired_token`.
    Expired,
    /// The approval was already handed out; the code is spent (`invalid_grant`).
    Consumed,
    /// No such device code (`invalid_grant`).
    Unknown,
}

/// An event for the audit trail, before it has a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub time: i64,
    pub kind: String,
    pub actor: String,
    pub outcome: String,
    pub details_json: String,
}

/// An audit event as stored, with its position in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub event: AuditEvent,
}

/// A vault: its name, kind and restore-approval policy (JSON owned by the `policy` crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vault {
    /// Unique name.
    pub name: String,
    /// `test` or `production`.
    pub kind: String,
    /// The vault policy as JSON.
    pub policy_json: String,
    /// Creation time (unix seconds).
    pub created_at: i64,
    /// User id of the creator.
    pub created_by: String,
    /// When it was (soft) deleted; none while it is in use.
    pub deleted_at: Option<i64>,
    /// Who deleted it (user name).
    pub deleted_by: Option<String>,
    /// When a deleted vault is purged for good.
    pub purge_at: Option<i64>,
}

/// A soft-deleted snapshot: its file stays in the repository (and its data through prunes)
/// until `purge_at`; until then `undelete` brings it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedSnapshot {
    /// Vault name.
    pub vault: String,
    /// Full snapshot id (hex).
    pub snapshot: String,
    /// When.
    pub deleted_at: i64,
    /// Who (user name, or `retention` for keep rules).
    pub deleted_by: String,
    /// When it is purged for good.
    pub purge_at: i64,
}

/// One passkey vote on a critical operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// Approval id.
    pub approval_id: String,
    /// Who.
    pub user_id: String,
    /// `requester` (the requester's own step-up) or `approver`.
    pub role: String,
    /// The WebAuthn evidence (JSON).
    pub evidence_json: String,
    /// When.
    pub created_at: i64,
}

/// An approval request and, once decided, who decided and with what evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Random id (also in the approval URL).
    pub id: String,
    /// `restore` or `critical`.
    pub kind: String,
    /// The vault concerned.
    pub vault: String,
    /// The operation as canonical JSON.
    pub operation_json: String,
    /// SHA-256 of `operation_json`, hex.
    pub digest: String,
    /// Who asked.
    pub requester_id: String,
    /// The requester's session: the grant is bound to it.
    pub requester_session: String,
    /// When it was asked (unix seconds).
    pub created_at: i64,
    /// After this it can no longer be approved.
    pub expires_at: i64,
    /// `pending`, `approved`, `denied`, `consumed`.
    pub status: String,
    /// Who approved or denied.
    pub approver_id: Option<String>,
    /// When.
    pub approved_at: Option<i64>,
    /// The WebAuthn evidence of the approval (JSON).
    pub evidence_json: Option<String>,
    /// Hash of the restore grant, once issued.
    pub grant_hash: Option<String>,
    /// Approving votes needed besides the requester's own (critical operations).
    pub required: i64,
    /// What running the approved operation did (critical operations), once it ran.
    pub result_json: Option<String>,
}
