//! Access decisions, and nothing else: which role may do what, on which vault, with what
//! strength and freshness of authentication. One pure function, [`decide`], with no I/O and no
//! clock (callers pass `now`), so the whole policy is covered by a table test and can be
//! simulated before it is relied on (`strongroom policy simulate`).
//!
//! The backup roles follow Azure Backup's split where it fits: Contributor manages vaults and
//! backups but cannot grant access; Backup Operator runs backups and checks but cannot delete or
//! change policy; Reader only looks. Strongroom adds Restore Operator (the only role whose
//! passkey can approve a restore), Auditor (reads the audit log, never data) and Security Admin
//! (policy, roles and, later, the second approval of critical operations).

use serde::{Deserialize, Serialize};

/// Built-in roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything on its scope, including granting roles; still needs approvals like anyone.
    Owner,
    /// Creates and manages vaults, backs up, requests restores, applies retention.
    Contributor,
    /// Backs up, checks, lists; requests restores; cannot delete or change policy.
    BackupOperator,
    /// Requests restores and approves other people's restores with a passkey.
    RestoreOperator,
    /// Lists vaults and snapshots; runs structural checks.
    Reader,
    /// Reads the audit log and vault metadata; never data.
    Auditor,
    /// Changes vault policy and grants roles below Owner; reads the audit log.
    SecurityAdmin,
}

impl Role {
    /// Every role, for tables and help texts.
    pub const ALL: [Role; 7] = [
        Role::Owner,
        Role::Contributor,
        Role::BackupOperator,
        Role::RestoreOperator,
        Role::Reader,
        Role::Auditor,
        Role::SecurityAdmin,
    ];

    /// The command-line and API name (`backup-operator`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Contributor => "contributor",
            Role::BackupOperator => "backup-operator",
            Role::RestoreOperator => "restore-operator",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::SecurityAdmin => "security-admin",
        }
    }

    /// Parses the command-line and API name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Where a role applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every vault and the server itself.
    Server,
    /// One vault.
    Vault(String),
}

/// One role held by the principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// Where it applies.
    pub scope: Scope,
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// User id.
    pub user_id: String,
    /// Roles held.
    pub grants: Vec<Grant>,
}

/// How the principal authenticated for this request (from the token or the approval).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthContext {
    /// The credential's attestation chains to a trusted root (`amr` contains `hwk`).
    pub hardware: bool,
    /// The authenticator verified the user (`amr` contains `user`).
    pub user_verified: bool,
    /// When the passkey assertion behind this request happened (unix seconds).
    pub auth_time: i64,
}

/// What is being attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// List vaults, show one, list its snapshots.
    VaultRead,
    /// Create a vault.
    VaultCreate,
    /// Back up into a vault.
    Backup,
    /// Structural or full check of a vault.
    Check,
    /// Apply retention rules (forget) and prune.
    Retention,
    /// Request a restore (runs only once approved).
    RestoreRequest,
    /// Approve someone's restore with a passkey.
    RestoreApprove,
    /// Assign or revoke roles.
    RoleManage,
    /// Change a vault's policy.
    PolicyChange,
    /// Read the audit log.
    AuditRead,
    /// Delete a vault or one of its snapshots (soft: recoverable for the vault's retention).
    Delete,
    /// Bring back a soft-deleted vault or snapshot.
    Undelete,
    /// Approve someone else's critical operation with a passkey (Security Admins only: not
    /// even an Owner holds it without the role).
    CriticalApprove,
}

impl Operation {
    /// Every operation, for tables.
    pub const ALL: [Operation; 13] = [
        Operation::VaultRead,
        Operation::VaultCreate,
        Operation::Backup,
        Operation::Check,
        Operation::Retention,
        Operation::RestoreRequest,
        Operation::RestoreApprove,
        Operation::RoleManage,
        Operation::PolicyChange,
        Operation::AuditRead,
        Operation::Delete,
        Operation::Undelete,
        Operation::CriticalApprove,
    ];
}

/// Vault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultKind {
    /// For trying policy out; same rules, lighter defaults.
    Test,
    /// Real backups.
    Production,
}

/// Whether a vault's recovery points can be removed early.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Immutability {
    /// Snapshots within retention can be deleted (a critical operation) and retention shortened.
    #[default]
    Disabled,
    /// Nothing within retention can be deleted and retention cannot be shortened, by anyone;
    /// the setting itself can still be changed (a critical operation).
    Enabled,
    /// As enabled, for good: the setting can never change again.
    Locked,
}

impl Immutability {
    /// The command-line and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Immutability::Disabled => "disabled",
            Immutability::Enabled => "enabled",
            Immutability::Locked => "locked",
        }
    }

    /// Parses the command-line and API name.
    pub fn parse(s: &str) -> Option<Immutability> {
        [Immutability::Disabled, Immutability::Enabled, Immutability::Locked].into_iter().find(|i| i.as_str() == s)
    }
}

/// Default retention of a vault: snapshots are protected, and deleted things recoverable, for
/// this many days.
pub const DEFAULT_RETENTION_DAYS: u32 = 14;

/// Longest retention a vault accepts (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3650;

fn default_retention_days() -> u32 {
    DEFAULT_RETENTION_DAYS
}

/// What an approval of a restore from this vault needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultPolicy {
    /// Test or production.
    pub kind: VaultKind,
    /// Only trusted-attested hardware authenticators may approve restores.
    pub require_hardware: bool,
    /// The approving assertion must be at most this many seconds old when the restore starts.
    pub approval_max_age: i64,
    /// The approver must be someone other than the requester.
    pub distinct_approver: bool,
    /// The server rotates the vault's key-encryption key when the newest version is this many
    /// days old (none: only on request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_key_days: Option<u32>,
    /// Days a snapshot is protected after it is taken (deleting it earlier is a critical
    /// operation, or impossible when immutable), and days a deleted snapshot or vault stays
    /// recoverable before it is purged. 0 turns soft delete off.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Whether protected snapshots can be deleted at all.
    #[serde(default)]
    pub immutability: Immutability,
}

impl VaultPolicy {
    /// Until when (unix seconds) a snapshot taken at `taken` is protected by retention.
    pub fn protected_until(&self, taken: i64) -> i64 {
        taken + i64::from(self.retention_days) * 86_400
    }

    /// When something deleted at `now` is purged for good.
    pub fn purge_at(&self, now: i64) -> i64 {
        now + i64::from(self.retention_days) * 86_400
    }

    /// Defaults per kind: production vaults need a different approver.
    pub fn default_for(kind: VaultKind) -> VaultPolicy {
        VaultPolicy {
            kind,
            require_hardware: false,
            approval_max_age: 300,
            distinct_approver: kind == VaultKind::Production,
            rotate_key_days: None,
            retention_days: DEFAULT_RETENTION_DAYS,
            immutability: Immutability::Disabled,
        }
    }
}

/// The resource an operation targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// The server as a whole (creating vaults, managing server-wide roles, the audit log).
    Server,
    /// One vault and its policy.
    Vault {
        /// Vault name.
        name: &'a str,
        /// Its policy.
        policy: &'a VaultPolicy,
    },
}

/// Operations that change who may do what need an authentication at most this old.
pub const ADMIN_MAX_AGE: i64 = 15 * 60;

/// Why something is refused; each has a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No role on this scope allows the operation.
    #[error("no role allows this operation on this resource")]
    NoRole,
    /// The approver requested the restore themselves, and the vault requires another person.
    #[error("the requester cannot approve their own restore on this vault")]
    SelfApproval,
    /// The vault requires a trusted-attested hardware authenticator for approvals.
    #[error("this vault requires a hardware authenticator for approvals")]
    HardwareRequired,
    /// The approving assertion is older than the vault's freshness window.
    #[error("the approval is older than this vault allows")]
    ApprovalTooOld,
    /// User verification did not happen.
    #[error("user verification is required")]
    UserNotVerified,
    /// The vault is immutable: nothing within retention can be deleted, retention cannot shrink.
    #[error("this vault is immutable: nothing within its retention can be deleted and retention cannot be shortened")]
    Immutable,
    /// The vault's immutability is locked and can never change.
    #[error("this vault's immutability is locked: it can never be changed")]
    Locked,
    /// The person who approved no longer holds a role that may approve it.
    #[error("the approver no longer holds a role that may approve this")]
    ApproverNoRole,
    /// The approver was enrolled through a link the requester created, so does not count as
    /// another person for the requester's operations.
    #[error("the approver was invited by the requester and does not count as another person")]
    InvitedByRequester,
}

impl DenyReason {
    /// Stable code for APIs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::NoRole => "policy.no_role",
            DenyReason::SelfApproval => "policy.self_approval",
            DenyReason::HardwareRequired => "policy.hardware_required",
            DenyReason::ApprovalTooOld => "policy.approval_too_old",
            DenyReason::UserNotVerified => "policy.user_not_verified",
            DenyReason::Immutable => "policy.immutable",
            DenyReason::Locked => "policy.locked",
            DenyReason::ApproverNoRole => "policy.approver_no_role",
            DenyReason::InvitedByRequester => "policy.invited_by_requester",
        }
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Authenticate again (RFC 9470): with at least `acr_values`, no longer than `max_age` ago.
    StepUp {
        /// Required `acr` (space-separated, as in RFC 9470).
        acr_values: String,
        /// Required freshness in seconds.
        max_age: i64,
    },
    /// Allowed once someone approves with a passkey (a restore).
    ApprovalRequired {
        /// The role the approver must hold on the vault.
        approver_role: Role,
        /// The approver must be another person.
        distinct_approver: bool,
        /// The approver's authenticator must be trusted hardware.
        require_hardware: bool,
        /// The approval must be at most this old when the job starts.
        max_age: i64,
    },
    /// Refused.
    Deny {
        /// Why.
        reason: DenyReason,
    },
}

/// Which operations a role allows.
pub fn role_allows(role: Role, op: Operation) -> bool {
    use Operation::*;
    match role {
        // Approving critical operations is the Security Admin's alone: an Owner who could also
        // approve them would be the single account the second approval exists to stop.
        Role::Owner => op != CriticalApprove,
        Role::Contributor => {
            matches!(op, VaultRead | VaultCreate | Backup | Check | Retention | RestoreRequest | Delete | Undelete)
        }
        Role::BackupOperator => matches!(op, VaultRead | Backup | Check | RestoreRequest),
        Role::RestoreOperator => matches!(op, VaultRead | RestoreRequest | RestoreApprove),
        Role::Reader => matches!(op, VaultRead | Check),
        Role::Auditor => matches!(op, VaultRead | AuditRead),
        Role::SecurityAdmin => {
            matches!(op, VaultRead | RoleManage | PolicyChange | AuditRead | Undelete | CriticalApprove)
        }
    }
}

fn holds(principal: &Principal, resource: &Resource<'_>, f: impl Fn(Role) -> bool) -> bool {
    principal.grants.iter().any(|g| {
        f(g.role)
            && match (&g.scope, resource) {
                (Scope::Server, _) => true,
                (Scope::Vault(v), Resource::Vault { name, .. }) => v == name,
                (Scope::Vault(_), Resource::Server) => false,
            }
    })
}

/// Approval facts the decision needs beyond the principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalFacts<'a> {
    /// Who requested the restore or critical operation being approved.
    pub requester_id: &'a str,
    /// The approver's account or approving credential was enrolled from a link the requester
    /// created: they do not count as another person for the requester's operations.
    pub introduced_by_requester: bool,
}

/// A change that may weaken a vault or who controls it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Delete a vault; `protected`: some snapshot in it is still within retention.
    DeleteVault {
        /// Some snapshot is within retention.
        protected: bool,
    },
    /// Delete one snapshot; `protected`: it is still within retention.
    DeleteSnapshot {
        /// It is within retention.
        protected: bool,
    },
    /// Set the retention (and soft-delete) period to this many days.
    SetRetention(u32),
    /// Set immutability.
    SetImmutability(Immutability),
    /// Change the restore-approval policy (hardware, freshness, second person, rotation).
    SetPolicy,
    /// Retire a key-encryption key version.
    RetireKey,
    /// Grant a role.
    GrantRole(Role),
    /// Take a role away.
    RevokeRole(Role),
    /// Disable an account or set its expiry; `security_admin`: the account holds that role.
    RestrictUser {
        /// The account is a Security Admin.
        security_admin: bool,
    },
}

/// How a [`Change`] may happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Right away, by anyone whose role allows it.
    Direct,
    /// Only after the requester's own passkey step-up and approvals from Security Admins other
    /// than the requester, each bound to the operation.
    Critical,
    /// Never, by anyone, however approved.
    Refused(DenyReason),
}

/// Which changes are critical, and which an immutable vault refuses outright. Pure; `vault` is
/// the vault's current policy (none for server-wide role changes). Callers check again right
/// before executing an approved change, so a vault locked meanwhile still refuses it.
pub fn gate(change: &Change, vault: Option<&VaultPolicy>) -> Gate {
    let immutability = vault.map(|v| v.immutability).unwrap_or_default();
    let immutable = immutability != Immutability::Disabled;
    match change {
        Change::DeleteVault { protected } | Change::DeleteSnapshot { protected } if *protected && immutable => {
            Gate::Refused(DenyReason::Immutable)
        }
        Change::DeleteVault { .. } => Gate::Critical,
        Change::DeleteSnapshot { protected } => {
            if *protected {
                Gate::Critical
            } else {
                Gate::Direct
            }
        }
        Change::SetRetention(days) => match vault {
            Some(v) if *days >= v.retention_days => Gate::Direct,
            Some(_) if immutable => Gate::Refused(DenyReason::Immutable),
            _ => Gate::Critical,
        },
        Change::SetImmutability(_) if immutability == Immutability::Locked => Gate::Refused(DenyReason::Locked),
        Change::SetImmutability(_) | Change::SetPolicy | Change::RetireKey => Gate::Critical,
        Change::GrantRole(role) => match role {
            Role::Owner | Role::SecurityAdmin => Gate::Critical,
            _ => Gate::Direct,
        },
        Change::RevokeRole(role) => match role {
            Role::SecurityAdmin => Gate::Critical,
            _ => Gate::Direct,
        },
        // Disabling or expiring a Security Admin takes the role away in effect.
        Change::RestrictUser { security_admin } => {
            if *security_admin {
                Gate::Critical
            } else {
                Gate::Direct
            }
        }
    }
}

/// Decides whether `principal`, authenticated as `auth`, may perform `op` on `resource` at
/// `now`. For [`Operation::RestoreApprove`] pass `approval` (the restore's requester); `auth`
/// is then the approval assertion itself.
pub fn decide(
    principal: &Principal,
    auth: &AuthContext,
    op: Operation,
    resource: &Resource<'_>,
    approval: Option<&ApprovalFacts<'_>>,
    now: i64,
) -> Decision {
    if !holds(principal, resource, |r| role_allows(r, op)) {
        return Decision::Deny { reason: DenyReason::NoRole };
    }
    if !auth.user_verified {
        return Decision::Deny { reason: DenyReason::UserNotVerified };
    }
    match op {
        Operation::RestoreRequest => match resource {
            Resource::Vault { policy, .. } => Decision::ApprovalRequired {
                approver_role: Role::RestoreOperator,
                distinct_approver: policy.distinct_approver,
                require_hardware: policy.require_hardware,
                max_age: policy.approval_max_age,
            },
            Resource::Server => Decision::Deny { reason: DenyReason::NoRole },
        },
        Operation::CriticalApprove => {
            if approval.is_some_and(|a| a.requester_id == principal.user_id) {
                return Decision::Deny { reason: DenyReason::SelfApproval };
            }
            if approval.is_some_and(|a| a.introduced_by_requester) {
                return Decision::Deny { reason: DenyReason::InvitedByRequester };
            }
            if now - auth.auth_time > ADMIN_MAX_AGE {
                return Decision::Deny { reason: DenyReason::ApprovalTooOld };
            }
            Decision::Allow
        }
        Operation::RestoreApprove => {
            let Resource::Vault { policy, .. } = resource else {
                return Decision::Deny { reason: DenyReason::NoRole };
            };
            if policy.distinct_approver && approval.is_some_and(|a| a.requester_id == principal.user_id) {
                return Decision::Deny { reason: DenyReason::SelfApproval };
            }
            if policy.distinct_approver && approval.is_some_and(|a| a.introduced_by_requester) {
                return Decision::Deny { reason: DenyReason::InvitedByRequester };
            }
            if policy.require_hardware && !auth.hardware {
                return Decision::Deny { reason: DenyReason::HardwareRequired };
            }
            if now - auth.auth_time > policy.approval_max_age {
                return Decision::Deny { reason: DenyReason::ApprovalTooOld };
            }
            Decision::Allow
        }
        Operation::RoleManage | Operation::PolicyChange | Operation::Delete => {
            if now - auth.auth_time > ADMIN_MAX_AGE {
                Decision::StepUp { acr_values: "phr phrh".into(), max_age: ADMIN_MAX_AGE }
            } else {
                Decision::Allow
            }
        }
        _ => Decision::Allow,
    }
}

/// Adding an authenticator to one's own account is a step-up operation: the passkey sign-in
/// behind the request must be at most [`ADMIN_MAX_AGE`] old, with user verification. (A
/// refreshed token keeps its session's original sign-in time, so a stolen refresh token is
/// not enough.)
pub fn decide_credential_add(auth: &AuthContext, now: i64) -> Decision {
    if !auth.user_verified || now - auth.auth_time > ADMIN_MAX_AGE {
        return Decision::StepUp { acr_values: "phr phrh".into(), max_age: ADMIN_MAX_AGE };
    }
    Decision::Allow
}

/// One use of an approved restore (its grant, or the server's own job): allowed only while the
/// requester still holds a role that may request restores from the vault, the approver still
/// holds one that may approve them, and the approval still satisfies the vault's *current*
/// policy (another person, hardware). Freshness is checked once, when the job starts.
/// `approval` is the approving assertion's authentication.
pub fn decide_grant_use(
    requester: &Principal,
    approver: &Principal,
    approval: &AuthContext,
    resource: &Resource<'_>,
) -> Decision {
    let Resource::Vault { policy, .. } = resource else {
        return Decision::Deny { reason: DenyReason::NoRole };
    };
    if !holds(requester, resource, |r| role_allows(r, Operation::RestoreRequest)) {
        return Decision::Deny { reason: DenyReason::NoRole };
    }
    if !holds(approver, resource, |r| role_allows(r, Operation::RestoreApprove)) {
        return Decision::Deny { reason: DenyReason::ApproverNoRole };
    }
    if policy.distinct_approver && approver.user_id == requester.user_id {
        return Decision::Deny { reason: DenyReason::SelfApproval };
    }
    if policy.require_hardware && !approval.hardware {
        return Decision::Deny { reason: DenyReason::HardwareRequired };
    }
    if !approval.user_verified {
        return Decision::Deny { reason: DenyReason::UserNotVerified };
    }
    Decision::Allow
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn principal(role: Role, scope: Scope) -> Principal {
        Principal { user_id: "u1".into(), grants: vec![Grant { role, scope }] }
    }

    fn auth(hardware: bool, age: i64) -> AuthContext {
        AuthContext { hardware, user_verified: true, auth_time: NOW - age }
    }

    /// The whole policy in one table: role × operation × authentication strength, on a
    /// production vault with a hardware-only approval policy. `A` allow, `R` approval
    /// required, `S` step-up, `-` deny (no role), `H` deny (hardware required).
    #[test]
    fn every_role_operation_and_strength() {
        let policy = VaultPolicy { require_hardware: true, ..VaultPolicy::default_for(VaultKind::Production) };
        let vault = Resource::Vault { name: "prod", policy: &policy };
        // Columns: the operations in Operation::ALL order.
        let table: [(Role, &str, &str); 7] = [
            //                      software key   hardware key
            (Role::Owner, "AAAAARHAAAAA-", "AAAAARAAAAAA-"),
            (Role::Contributor, "AAAAAR----AA-", "AAAAAR----AA-"),
            (Role::BackupOperator, "A-AA-R-------", "A-AA-R-------"),
            (Role::RestoreOperator, "A----RH------", "A----RA------"),
            (Role::Reader, "A--A---------", "A--A---------"),
            (Role::Auditor, "A--------A---", "A--------A---"),
            (Role::SecurityAdmin, "A------AAA-AA", "A------AAA-AA"),
        ];
        let requester = ApprovalFacts { requester_id: "someone-else", introduced_by_requester: false };
        for (role, soft, hard) in table {
            for (hardware, row) in [(false, soft), (true, hard)] {
                for (op, want) in Operation::ALL.iter().zip(row.chars()) {
                    let d = decide(
                        &principal(role, Scope::Server),
                        &auth(hardware, 10),
                        *op,
                        &vault,
                        Some(&requester),
                        NOW,
                    );
                    let got = match d {
                        Decision::Allow => 'A',
                        Decision::ApprovalRequired { .. } => 'R',
                        Decision::StepUp { .. } => 'S',
                        Decision::Deny { reason: DenyReason::NoRole } => '-',
                        Decision::Deny { reason: DenyReason::HardwareRequired } => 'H',
                        Decision::Deny { .. } => '?',
                    };
                    assert_eq!(got, want, "{role:?} {op:?} hardware={hardware}");
                }
            }
        }
    }

    #[test]
    fn vault_scoped_roles_do_not_leak_to_other_vaults_or_the_server() {
        let policy = VaultPolicy::default_for(VaultKind::Test);
        let p = principal(Role::Contributor, Scope::Vault("a".into()));
        let a = Resource::Vault { name: "a", policy: &policy };
        let b = Resource::Vault { name: "b", policy: &policy };
        assert_eq!(decide(&p, &auth(false, 0), Operation::Backup, &a, None, NOW), Decision::Allow);
        assert_eq!(
            decide(&p, &auth(false, 0), Operation::Backup, &b, None, NOW),
            Decision::Deny { reason: DenyReason::NoRole }
        );
        assert_eq!(
            decide(&p, &auth(false, 0), Operation::VaultCreate, &Resource::Server, None, NOW),
            Decision::Deny { reason: DenyReason::NoRole }
        );
    }

    #[test]
    fn restore_approvals_check_person_strength_and_freshness() {
        let prod = VaultPolicy::default_for(VaultKind::Production);
        let test = VaultPolicy::default_for(VaultKind::Test);
        let p = principal(Role::RestoreOperator, Scope::Vault("v".into()));
        let own = ApprovalFacts { requester_id: "u1", introduced_by_requester: false };
        let v = Resource::Vault { name: "v", policy: &prod };
        assert_eq!(
            decide(&p, &auth(false, 0), Operation::RestoreApprove, &v, Some(&own), NOW),
            Decision::Deny { reason: DenyReason::SelfApproval }
        );
        let t = Resource::Vault { name: "v", policy: &test };
        assert_eq!(decide(&p, &auth(false, 0), Operation::RestoreApprove, &t, Some(&own), NOW), Decision::Allow);
        let other = ApprovalFacts { requester_id: "u2", introduced_by_requester: false };
        assert_eq!(
            decide(&p, &auth(false, prod.approval_max_age + 1), Operation::RestoreApprove, &v, Some(&other), NOW),
            Decision::Deny { reason: DenyReason::ApprovalTooOld }
        );
        let no_uv = AuthContext { user_verified: false, ..auth(true, 0) };
        assert_eq!(
            decide(&p, &no_uv, Operation::RestoreApprove, &v, Some(&other), NOW),
            Decision::Deny { reason: DenyReason::UserNotVerified }
        );
    }

    #[test]
    fn critical_changes_and_what_immutability_refuses() {
        let mut v = VaultPolicy::default_for(VaultKind::Production);
        let crit = |c: &Change, v: &VaultPolicy| gate(c, Some(v));
        use Change::*;
        // Not immutable: deleting protected things, shortening retention, the settings and
        // the keys are critical; lengthening retention and deleting expired snapshots are not.
        assert_eq!(crit(&DeleteVault { protected: false }, &v), Gate::Critical);
        assert_eq!(crit(&DeleteVault { protected: true }, &v), Gate::Critical);
        assert_eq!(crit(&DeleteSnapshot { protected: true }, &v), Gate::Critical);
        assert_eq!(crit(&DeleteSnapshot { protected: false }, &v), Gate::Direct);
        assert_eq!(crit(&SetRetention(30), &v), Gate::Direct);
        assert_eq!(crit(&SetRetention(7), &v), Gate::Critical);
        assert_eq!(crit(&SetRetention(0), &v), Gate::Critical);
        for i in [Immutability::Enabled, Immutability::Locked] {
            assert_eq!(crit(&SetImmutability(i), &v), Gate::Critical);
        }
        assert_eq!(crit(&SetPolicy, &v), Gate::Critical);
        assert_eq!(crit(&RetireKey, &v), Gate::Critical);
        // Enabled and locked refuse early deletion and shorter retention outright; only
        // locked refuses changing the setting.
        for (i, setting) in
            [(Immutability::Enabled, Gate::Critical), (Immutability::Locked, Gate::Refused(DenyReason::Locked))]
        {
            v.immutability = i;
            assert_eq!(crit(&DeleteVault { protected: true }, &v), Gate::Refused(DenyReason::Immutable));
            assert_eq!(crit(&DeleteSnapshot { protected: true }, &v), Gate::Refused(DenyReason::Immutable));
            assert_eq!(crit(&DeleteVault { protected: false }, &v), Gate::Critical);
            assert_eq!(crit(&DeleteSnapshot { protected: false }, &v), Gate::Direct);
            assert_eq!(crit(&SetRetention(13), &v), Gate::Refused(DenyReason::Immutable));
            assert_eq!(crit(&SetRetention(15), &v), Gate::Direct);
            assert_eq!(crit(&SetImmutability(Immutability::Disabled), &v), setting);
        }
        // Roles: handing out or taking away the power to approve is critical.
        assert_eq!(gate(&GrantRole(Role::Owner), None), Gate::Critical);
        assert_eq!(gate(&GrantRole(Role::SecurityAdmin), None), Gate::Critical);
        assert_eq!(gate(&RevokeRole(Role::SecurityAdmin), None), Gate::Critical);
        assert_eq!(gate(&GrantRole(Role::Reader), None), Gate::Direct);
        assert_eq!(gate(&RevokeRole(Role::Contributor), None), Gate::Direct);
        assert_eq!(gate(&RestrictUser { security_admin: true }, None), Gate::Critical);
        assert_eq!(gate(&RestrictUser { security_admin: false }, None), Gate::Direct);
    }

    #[test]
    fn critical_approvals_need_a_security_admin_other_than_the_requester() {
        let vp = VaultPolicy::default_for(VaultKind::Test);
        let v = Resource::Vault { name: "v", policy: &vp };
        let other = ApprovalFacts { requester_id: "u2", introduced_by_requester: false };
        let own = ApprovalFacts { requester_id: "u1", introduced_by_requester: false };
        let sa = principal(Role::SecurityAdmin, Scope::Server);
        assert_eq!(decide(&sa, &auth(false, 0), Operation::CriticalApprove, &v, Some(&other), NOW), Decision::Allow);
        assert_eq!(
            decide(&sa, &auth(false, 0), Operation::CriticalApprove, &v, Some(&own), NOW),
            Decision::Deny { reason: DenyReason::SelfApproval }
        );
        let owner = principal(Role::Owner, Scope::Server);
        assert_eq!(
            decide(&owner, &auth(true, 0), Operation::CriticalApprove, &v, Some(&other), NOW),
            Decision::Deny { reason: DenyReason::NoRole }
        );
    }

    #[test]
    fn granting_roles_needs_a_recent_sign_in() {
        let p = principal(Role::SecurityAdmin, Scope::Server);
        assert_eq!(decide(&p, &auth(false, 60), Operation::RoleManage, &Resource::Server, None, NOW), Decision::Allow);
        assert_eq!(
            decide(&p, &auth(false, ADMIN_MAX_AGE + 1), Operation::RoleManage, &Resource::Server, None, NOW),
            Decision::StepUp { acr_values: "phr phrh".into(), max_age: ADMIN_MAX_AGE }
        );
        let json = serde_json::to_value(Decision::StepUp { acr_values: "phr".into(), max_age: 5 }).unwrap();
        assert_eq!(json["decision"], "step_up");
    }

    #[test]
    fn a_grant_stops_when_a_role_or_the_vault_policy_changes() {
        let prod = VaultPolicy::default_for(VaultKind::Production);
        let vault = Resource::Vault { name: "prod", policy: &prod };
        let requester = principal(Role::BackupOperator, Scope::Vault("prod".into()));
        let approver = Principal {
            user_id: "u2".into(),
            grants: vec![Grant { role: Role::RestoreOperator, scope: Scope::Server }],
        };
        assert_eq!(decide_grant_use(&requester, &approver, &auth(false, 0), &vault), Decision::Allow);
        let nobody = Principal { user_id: "u1".into(), grants: vec![] };
        let deny = |reason| Decision::Deny { reason };
        assert_eq!(decide_grant_use(&nobody, &approver, &auth(false, 0), &vault), deny(DenyReason::NoRole));
        let other_vault = principal(Role::BackupOperator, Scope::Vault("test".into()));
        assert_eq!(decide_grant_use(&other_vault, &approver, &auth(false, 0), &vault), deny(DenyReason::NoRole));
        let demoted = Principal { user_id: "u2".into(), grants: vec![] };
        assert_eq!(decide_grant_use(&requester, &demoted, &auth(false, 0), &vault), deny(DenyReason::ApproverNoRole));
        let hw = VaultPolicy { require_hardware: true, ..prod.clone() };
        let hw_vault = Resource::Vault { name: "prod", policy: &hw };
        assert_eq!(
            decide_grant_use(&requester, &approver, &auth(false, 0), &hw_vault),
            deny(DenyReason::HardwareRequired)
        );
        assert_eq!(decide_grant_use(&requester, &approver, &auth(true, 0), &hw_vault), Decision::Allow);
        let both = Principal {
            user_id: "u1".into(),
            grants: vec![Grant { role: Role::RestoreOperator, scope: Scope::Server }],
        };
        assert_eq!(decide_grant_use(&both, &both, &auth(false, 0), &vault), deny(DenyReason::SelfApproval));
        let test = VaultPolicy::default_for(VaultKind::Test);
        let test_vault = Resource::Vault { name: "prod", policy: &test };
        assert_eq!(decide_grant_use(&both, &both, &auth(false, 0), &test_vault), Decision::Allow);
    }

    #[test]
    fn an_approver_the_requester_enrolled_is_not_another_person() {
        let prod = VaultPolicy::default_for(VaultKind::Production);
        let vault = Resource::Vault { name: "prod", policy: &prod };
        let approver = principal(Role::RestoreOperator, Scope::Server);
        let sa = principal(Role::SecurityAdmin, Scope::Server);
        let facts = ApprovalFacts { requester_id: "u2", introduced_by_requester: true };
        let deny = Decision::Deny { reason: DenyReason::InvitedByRequester };
        assert_eq!(decide(&approver, &auth(false, 0), Operation::RestoreApprove, &vault, Some(&facts), NOW), deny);
        assert_eq!(decide(&sa, &auth(false, 0), Operation::CriticalApprove, &vault, Some(&facts), NOW), deny);
        let test = VaultPolicy::default_for(VaultKind::Test);
        let test_vault = Resource::Vault { name: "t", policy: &test };
        assert_eq!(
            decide(&approver, &auth(false, 0), Operation::RestoreApprove, &test_vault, Some(&facts), NOW),
            Decision::Allow,
            "a vault without the two-person rule does not care who enrolled whom"
        );
    }
}
