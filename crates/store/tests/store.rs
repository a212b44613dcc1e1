//! The store against a real SQLite file: every method, and the single-use operations under races.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use store::{
    AuditEvent, Ceremony, CredentialRecord, DeviceCode, DevicePoll, EnrollLink, RefreshUse, RoleAssignment, Session,
    Store, StoreError, User,
};
use tempfile::TempDir;

const NOW: i64 = 1_700_000_000;

async fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&db_path(&dir)).await.unwrap();
    (dir, store)
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("meta.db")
}

fn user(id: &str, username: &str) -> User {
    User {
        id: id.into(),
        username: username.into(),
        display_name: format!("{username} display"),
        created_at: NOW,
        expires_at: None,
        disabled: false,
    }
}

fn credential(id: &str, user_id: &str, created_at: i64) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        user_id: user_id.into(),
        name: format!("key {id}"),
        credential_json: format!("{{\"cred\":\"{id}\"}}"),
        counter: 0,
        aaguid: "00000000-0000-0000-0000-000000000000".into(),
        attestation_format: "packed".into(),
        attestation_trusted: true,
        backup_eligible: false,
        backup_state: false,
        transports: "[\"usb\"]".into(),
        created_at,
        last_used_at: None,
        revoked_at: None,
        locked_at: None,
        lock_reason: None,
    }
}

fn session(id: &str, user_id: &str, credential_id: &str) -> Session {
    Session {
        id: id.into(),
        user_id: user_id.into(),
        credential_id: credential_id.into(),
        auth_time: NOW,
        amr: "[\"hwk\",\"user\"]".into(),
        acr: "phrh".into(),
        created_at: NOW,
        expires_at: NOW + 3600,
        revoked_at: None,
    }
}

fn ceremony(id: &str, kind: &str, expires_at: i64) -> Ceremony {
    Ceremony {
        id: id.into(),
        kind: kind.into(),
        state_json: format!("{{\"challenge\":\"{id}\"}}"),
        subject: "alice".into(),
        expires_at,
    }
}

fn enroll_link(token_hash: &str, expires_at: i64) -> EnrollLink {
    EnrollLink {
        token_hash: token_hash.into(),
        username: "newbie".into(),
        role: "owner".into(),
        vault: None,
        user_id: None,
        created_by: "first-start".into(),
        created_at: NOW,
        expires_at,
        used_at: None,
    }
}

fn device_code(hash: &str, user_code: &str) -> DeviceCode {
    DeviceCode {
        device_code_hash: hash.into(),
        user_code: user_code.into(),
        client_id: "strongroom-cli".into(),
        scope: "openid".into(),
        created_at: NOW,
        expires_at: NOW + 600,
        interval: 5,
        last_poll_at: None,
        status: "pending".into(),
        session_id: None,
        user_id: None,
    }
}

fn event(kind: &str) -> AuditEvent {
    AuditEvent {
        time: NOW,
        kind: kind.into(),
        actor: "alice".into(),
        outcome: "success".into(),
        details_json: "{}".into(),
    }
}

/// A user "u1" (alice) with one credential "c1" and a session "s1" opened with it.
async fn alice(store: &Store) {
    store.create_user(&user("u1", "alice")).await.unwrap();
    store.insert_credential(&credential("c1", "u1", NOW)).await.unwrap();
    store.create_session(&session("s1", "u1", "c1")).await.unwrap();
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn raw_pool(path: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    sqlx::SqlitePool::connect_with(options).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Opening, files, migrations

#[tokio::test]
async fn database_file_is_created_with_mode_0600_and_uses_wal() {
    let (dir, store) = open().await;
    store.create_user(&user("u1", "alice")).await.unwrap();
    assert_eq!(mode_of(&db_path(&dir)), 0o600);
    let wal = dir.path().join("meta.db-wal");
    assert!(wal.exists(), "WAL journal mode leaves a -wal file beside the database while open");
    assert_eq!(mode_of(&wal), 0o600);
    store.close().await;
}

#[tokio::test]
async fn opening_a_missing_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_sqlite(&dir.path().join("nope/meta.db")).await.unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = Store::open_sqlite(&path).await.unwrap();
        alice(&store).await;
        store.append_audit(&event("first")).await.unwrap();
        store.close().await;
    }
    let store = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(store.user_by_name("alice").await.unwrap().unwrap().id, "u1");
    assert_eq!(store.credential("c1").await.unwrap().unwrap().user_id, "u1");
    assert!(store.session("s1").await.unwrap().is_some());
    // The audit sequence continues rather than restarting.
    assert_eq!(store.append_audit(&event("second")).await.unwrap(), 2);
}

#[tokio::test]
async fn connect_accepts_sqlite_urls_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    store.create_user(&user("u1", "alice")).await.unwrap();
    assert_eq!(mode_of(&path), 0o600);
    store.close().await;

    let memory = Store::connect("sqlite::memory:").await.unwrap();
    memory.create_user(&user("u1", "alice")).await.unwrap();
    assert_eq!(memory.list_users().await.unwrap().len(), 1);

    for url in ["postgres://localhost/strongroom", "mysql://localhost/x", "nonsense"] {
        let err = Store::connect(url).await.unwrap_err();
        assert!(matches!(err, StoreError::Unsupported(_)), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn migrations_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    Store::open_sqlite(&path).await.unwrap().close().await;
    Store::open_sqlite(&path).await.unwrap().close().await;
    let pool = raw_pool(&path).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version").fetch_all(&pool).await.unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7], "each migration recorded exactly once");
}

#[tokio::test]
async fn vaults_are_created_once_listed_and_updated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&db_path(&dir)).await.unwrap();
    let v = store::Vault {
        name: "prod".into(),
        kind: "production".into(),
        policy_json: "{}".into(),
        created_at: 10,
        created_by: "u1".into(),
        deleted_at: None,
        deleted_by: None,
        purge_at: None,
    };
    store.create_vault(&v).await.unwrap();
    assert!(matches!(store.create_vault(&v).await, Err(StoreError::Conflict(_))));
    let bad = store::Vault { name: "x".into(), kind: "weird".into(), ..v.clone() };
    assert!(matches!(store.create_vault(&bad).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.vault("prod").await.unwrap(), Some(v.clone()));
    assert_eq!(store.list_vaults().await.unwrap(), vec![v]);
    store.set_vault_policy("prod", "{\"a\":1}").await.unwrap();
    assert_eq!(store.vault("prod").await.unwrap().unwrap().policy_json, "{\"a\":1}");
    assert!(matches!(store.set_vault_policy("nope", "{}").await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn soft_deleted_vaults_and_snapshots_come_back_or_are_purged_when_due() {
    let (_dir, store) = open().await;
    let v = store::Vault {
        name: "v".into(),
        kind: "test".into(),
        policy_json: "{}".into(),
        created_at: 10,
        created_by: "u1".into(),
        deleted_at: None,
        deleted_by: None,
        purge_at: None,
    };
    store.create_vault(&v).await.unwrap();
    store
        .add_role(&store::RoleAssignment { user_id: "u1".into(), role: "reader".into(), vault: Some("v".into()) })
        .await
        .ok();
    let d = store::DeletedSnapshot {
        vault: "v".into(),
        snapshot: "ab".into(),
        deleted_at: 100,
        deleted_by: "alice".into(),
        purge_at: 200,
    };
    assert!(store.soft_delete_snapshot(&d).await.unwrap());
    assert!(!store.soft_delete_snapshot(&d).await.unwrap(), "deleted once");
    assert_eq!(store.deleted_snapshots("v").await.unwrap(), vec![d.clone()]);
    assert!(store.snapshots_due_for_purge(199).await.unwrap().is_empty());
    assert_eq!(store.snapshots_due_for_purge(200).await.unwrap(), vec![d.clone()]);
    assert!(!store.undelete_snapshot("v", "ab", 200).await.unwrap(), "not once it is due for purge");
    assert!(store.undelete_snapshot("v", "ab", 199).await.unwrap());
    assert!(!store.undelete_snapshot("v", "ab", 199).await.unwrap());
    assert!(store.soft_delete_snapshot(&d).await.unwrap());
    assert!(store.drop_snapshot_tombstone("v", "ab").await.unwrap());
    assert!(store.soft_delete_snapshot(&d).await.unwrap());

    assert!(store.soft_delete_vault("v", "alice", 100, 300).await.unwrap());
    assert!(!store.soft_delete_vault("v", "alice", 101, 301).await.unwrap(), "deleted once");
    assert!(store.snapshots_due_for_purge(1000).await.unwrap().is_empty(), "a deleted vault's snapshots wait for it");
    let got = store.vault("v").await.unwrap().unwrap();
    assert_eq!((got.deleted_at, got.deleted_by.as_deref(), got.purge_at), (Some(100), Some("alice"), Some(300)));
    assert!(!store.undelete_vault("v", 300).await.unwrap(), "not once it is due for purge");
    assert!(store.undelete_vault("v", 299).await.unwrap());
    assert_eq!(store.vault("v").await.unwrap().unwrap(), v);
    assert!(store.soft_delete_vault("v", "alice", 100, 300).await.unwrap());
    assert!(store.vaults_due_for_purge(299).await.unwrap().is_empty());
    assert!(!store.purge_vault("v", 299).await.unwrap(), "not due yet");
    assert_eq!(store.vaults_due_for_purge(300).await.unwrap().len(), 1);
    assert!(store.purge_vault("v", 300).await.unwrap());
    assert!(store.vault("v").await.unwrap().is_none());
    assert!(store.deleted_snapshots("v").await.unwrap().is_empty());
    assert!(store.all_roles().await.unwrap().iter().all(|r| r.vault.as_deref() != Some("v")));
}

#[tokio::test]
async fn server_flags_are_claimed_once() {
    let (_dir, store) = open().await;
    assert_eq!(store.flag("x").await.unwrap(), None);
    assert!(store.claim_flag("x", 10).await.unwrap());
    assert!(!store.claim_flag("x", 11).await.unwrap());
    assert_eq!(store.flag("x").await.unwrap(), Some(10));
}

#[tokio::test]
async fn critical_approvals_complete_once_with_the_requester_and_enough_approvers() {
    let (_dir, store) = open().await;
    let a = store::Approval {
        id: "a1".into(),
        kind: "critical".into(),
        vault: "v".into(),
        operation_json: "{}".into(),
        digest: "d1".into(),
        requester_id: "req".into(),
        requester_session: "s".into(),
        created_at: 100,
        expires_at: 200,
        status: "pending".into(),
        approver_id: None,
        approved_at: None,
        evidence_json: None,
        grant_hash: None,
        required: 2,
        result_json: None,
    };
    store.create_approval(&a).await.unwrap();
    let vote = |user: &str, role: &str, at: i64| store::Vote {
        approval_id: "a1".into(),
        user_id: user.into(),
        role: role.into(),
        evidence_json: "{}".into(),
        created_at: at,
    };
    assert!(!store.add_vote(&vote("x", "approver", 110), "other-digest").await.unwrap(), "bound to the digest");
    assert!(store.add_vote(&vote("sa1", "approver", 110), "d1").await.unwrap());
    assert!(!store.add_vote(&vote("sa1", "approver", 111), "d1").await.unwrap(), "one vote per person");
    assert!(store.add_vote(&vote("sa2", "approver", 112), "d1").await.unwrap());
    assert!(!store.complete_approval("a1", 113).await.unwrap(), "the requester has not stepped up");
    assert!(store.add_vote(&vote("req", "requester", 114), "d1").await.unwrap());
    assert!(!store.complete_approval("a1", 200).await.unwrap(), "expired");
    assert!(store.complete_approval("a1", 115).await.unwrap());
    assert!(!store.complete_approval("a1", 116).await.unwrap(), "completed once");
    assert!(!store.add_vote(&vote("sa3", "approver", 117), "d1").await.unwrap(), "no votes after approval");
    assert_eq!(store.votes("a1").await.unwrap().len(), 3);
    assert_eq!(store.unfinished_critical().await.unwrap().len(), 1);
    assert!(store.claim_approved("a1").await.unwrap());
    assert!(!store.claim_approved("a1").await.unwrap(), "claimed once");
    assert_eq!(store.unfinished_critical().await.unwrap().len(), 1, "claimed but not finished");
    store.set_approval_result("a1", "{\"ok\":true}").await.unwrap();
    assert!(store.unfinished_critical().await.unwrap().is_empty());
    let got = store.approval("a1").await.unwrap().unwrap();
    assert_eq!((got.status.as_str(), got.required, got.result_json.as_deref()), ("consumed", 2, Some("{\"ok\":true}")));
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    Store::open_sqlite(&path).await.unwrap().close().await;
    let pool = raw_pool(&path).await;
    sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = Store::open_sqlite(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Migration(_)), "{err:?}");
}

#[tokio::test]
async fn an_applied_migration_that_was_edited_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    Store::open_sqlite(&path).await.unwrap().close().await;
    let pool = raw_pool(&path).await;
    sqlx::query("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1").execute(&pool).await.unwrap();
    pool.close().await;
    let err = Store::open_sqlite(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Migration(_)), "{err:?}");
}

#[tokio::test]
async fn flags_other_than_0_and_1_are_refused_by_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open_sqlite(&path).await.unwrap();
    store.create_user(&user("u1", "alice")).await.unwrap();
    let pool = raw_pool(&path).await;
    // The CHECK constraint refuses a flag other than 0/1 even from outside the store.
    let refused = sqlx::query("UPDATE users SET disabled = 7 WHERE id = 'u1'").execute(&pool).await;
    assert!(refused.is_err());
}

// ---------------------------------------------------------------------------------------------
// Users and roles

#[tokio::test]
async fn users_are_created_read_listed_and_updated() {
    let (_dir, store) = open().await;
    let mut bob = user("u2", "bob");
    bob.expires_at = Some(NOW + 10);
    store.create_user(&bob).await.unwrap();
    store.create_user(&user("u1", "alice")).await.unwrap();

    assert_eq!(store.user_by_id("u2").await.unwrap(), Some(bob.clone()));
    assert_eq!(store.user_by_name("bob").await.unwrap(), Some(bob));
    assert_eq!(store.user_by_id("nobody").await.unwrap(), None);
    assert_eq!(store.user_by_name("Bob").await.unwrap(), None, "usernames compare exactly");
    let names: Vec<String> = store.list_users().await.unwrap().into_iter().map(|u| u.username).collect();
    assert_eq!(names, ["alice", "bob"]);

    store.set_user_disabled("u1", true).await.unwrap();
    assert!(store.user_by_id("u1").await.unwrap().unwrap().disabled);
    store.set_user_disabled("u1", false).await.unwrap();
    assert!(!store.user_by_id("u1").await.unwrap().unwrap().disabled);
    store.set_user_expiry("u1", Some(NOW + 99)).await.unwrap();
    assert_eq!(store.user_by_id("u1").await.unwrap().unwrap().expires_at, Some(NOW + 99));
    store.set_user_expiry("u1", None).await.unwrap();
    assert_eq!(store.user_by_id("u1").await.unwrap().unwrap().expires_at, None);

    assert!(matches!(store.set_user_disabled("nobody", true).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.set_user_expiry("nobody", None).await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn duplicate_username_or_id_is_a_conflict() {
    let (_dir, store) = open().await;
    store.create_user(&user("u1", "alice")).await.unwrap();
    let err = store.create_user(&user("u2", "alice")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(m) if m.contains("username")), "{err:?}");
    let err = store.create_user(&user("u1", "carol")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(m) if m.contains("user id")), "{err:?}");
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}

#[tokio::test]
async fn roles_are_idempotent_scoped_and_removable() {
    let (_dir, store) = open().await;
    store.create_user(&user("u1", "alice")).await.unwrap();
    let owner = RoleAssignment { user_id: "u1".into(), role: "owner".into(), vault: None };
    let operator = RoleAssignment { user_id: "u1".into(), role: "operator".into(), vault: Some("db".into()) };
    store.add_role(&owner).await.unwrap();
    store.add_role(&owner).await.unwrap();
    store.add_role(&operator).await.unwrap();
    assert_eq!(store.roles_of("u1").await.unwrap(), vec![operator.clone(), owner.clone()]);

    assert!(store.remove_role(&operator).await.unwrap());
    assert!(!store.remove_role(&operator).await.unwrap());
    assert_eq!(store.roles_of("u1").await.unwrap(), vec![owner]);
    assert!(store.roles_of("nobody").await.unwrap().is_empty());

    let ghost = RoleAssignment { user_id: "nobody".into(), role: "owner".into(), vault: None };
    assert!(matches!(store.add_role(&ghost).await, Err(StoreError::NotFound(_))));
    let empty = RoleAssignment { user_id: "u1".into(), role: "owner".into(), vault: Some(String::new()) };
    assert!(matches!(store.add_role(&empty).await, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn active_role_holders_exclude_disabled_expired_and_vault_scoped_users() {
    let (_dir, store) = open().await;
    for (id, name) in [("u1", "alice"), ("u2", "bob"), ("u3", "carol"), ("u4", "dave"), ("u5", "erin")] {
        store.create_user(&user(id, name)).await.unwrap();
    }
    let global = |id: &str| RoleAssignment { user_id: id.into(), role: "owner".into(), vault: None };
    for id in ["u1", "u2", "u3"] {
        store.add_role(&global(id)).await.unwrap();
    }
    // u1 also owns a vault: still one user.
    store
        .add_role(&RoleAssignment { user_id: "u1".into(), role: "owner".into(), vault: Some("v".into()) })
        .await
        .unwrap();
    // u4 owns only one vault: not counted.
    store
        .add_role(&RoleAssignment { user_id: "u4".into(), role: "owner".into(), vault: Some("v".into()) })
        .await
        .unwrap();
    store.add_role(&RoleAssignment { user_id: "u5".into(), role: "auditor".into(), vault: None }).await.unwrap();
    assert_eq!(store.count_active_users_with_role("owner", NOW).await.unwrap(), 3);

    store.set_user_disabled("u2", true).await.unwrap();
    assert_eq!(store.count_active_users_with_role("owner", NOW).await.unwrap(), 2);
    store.set_user_expiry("u3", Some(NOW + 10)).await.unwrap();
    assert_eq!(store.count_active_users_with_role("owner", NOW + 9).await.unwrap(), 2);
    assert_eq!(store.count_active_users_with_role("owner", NOW + 10).await.unwrap(), 1);
    assert_eq!(store.count_active_users_with_role("auditor", NOW).await.unwrap(), 1);
    assert_eq!(store.count_active_users_with_role("nobody", NOW).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// Credentials

#[tokio::test]
async fn credentials_round_trip_and_are_listed_oldest_first() {
    let (_dir, store) = open().await;
    store.create_user(&user("u1", "alice")).await.unwrap();
    let mut newer = credential("c2", "u1", NOW + 5);
    newer.backup_eligible = true;
    newer.backup_state = true;
    newer.attestation_trusted = false;
    newer.last_used_at = Some(NOW + 6);
    store.insert_credential(&newer).await.unwrap();
    let older = credential("c1", "u1", NOW);
    store.insert_credential(&older).await.unwrap();

    assert_eq!(store.credential("c2").await.unwrap(), Some(newer.clone()));
    assert_eq!(store.credential("zz").await.unwrap(), None);
    assert_eq!(store.credentials_of("u1").await.unwrap(), vec![older.clone(), newer.clone()]);
    assert_eq!(store.active_credentials_of("u1").await.unwrap(), vec![older, newer]);
    assert!(store.credentials_of("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_credential_id_registered_to_anyone_is_a_conflict() {
    let (_dir, store) = open().await;
    store.create_user(&user("u1", "alice")).await.unwrap();
    store.create_user(&user("u2", "bob")).await.unwrap();
    store.insert_credential(&credential("c1", "u1", NOW)).await.unwrap();
    let err = store.insert_credential(&credential("c1", "u2", NOW)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(matches!(store.insert_credential(&credential("c9", "nobody", NOW)).await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn recording_a_use_updates_counter_state_and_time_but_not_for_locked_credentials() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_credential(&credential("c2", "u1", NOW + 1)).await.unwrap();
    store.record_credential_use("c1", 0, 7, true, "{\"cred\":\"updated\"}", NOW + 30).await.unwrap();
    // A concurrent assertion checked against the old counter loses the compare-and-set.
    let err = store.record_credential_use("c1", 0, 6, true, "{}", NOW + 31).await.unwrap_err();
    assert!(matches!(err, StoreError::Stale(_)), "{err:?}");
    let c1 = store.credential("c1").await.unwrap().unwrap();
    assert_eq!((c1.counter, c1.backup_state, c1.last_used_at), (7, true, Some(NOW + 30)));
    assert_eq!(c1.credential_json, "{\"cred\":\"updated\"}");

    store.lock_credential("c1", "counter regression", NOW + 40).await.unwrap();
    let err = store.record_credential_use("c1", 7, 8, true, "{}", NOW + 50).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.credential("c1").await.unwrap().unwrap().counter, 7);
    // With c1 locked, c2 is the last active credential.
    assert!(matches!(store.revoke_credential("c2", NOW + 60).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.record_credential_use("zz", 0, 1, false, "{}", NOW).await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn credentials_can_be_renamed() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.rename_credential("c1", "YubiKey 5C").await.unwrap();
    assert_eq!(store.credential("c1").await.unwrap().unwrap().name, "YubiKey 5C");
    assert!(matches!(store.rename_credential("zz", "x").await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn revoking_the_last_active_credential_is_refused() {
    let (_dir, store) = open().await;
    alice(&store).await;
    let err = store.revoke_credential("c1", NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.credential("c1").await.unwrap().unwrap().revoked_at, None);
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, None, "a refused revoke changes nothing");

    store.insert_credential(&credential("c2", "u1", NOW + 1)).await.unwrap();
    store.revoke_credential("c1", NOW + 2).await.unwrap();
    assert_eq!(store.credential("c1").await.unwrap().unwrap().revoked_at, Some(NOW + 2));
    // Revoked credentials stay listed, but are no longer active.
    assert_eq!(store.credentials_of("u1").await.unwrap().len(), 2);
    let active: Vec<String> = store.active_credentials_of("u1").await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(active, ["c2"]);
    // Revoking again is a no-op; c2 is now the last one.
    store.revoke_credential("c1", NOW + 3).await.unwrap();
    assert_eq!(store.credential("c1").await.unwrap().unwrap().revoked_at, Some(NOW + 2));
    assert!(matches!(store.revoke_credential("c2", NOW + 3).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.revoke_credential("zz", NOW).await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn a_locked_credential_does_not_count_as_active_and_may_be_revoked() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_credential(&credential("c2", "u1", NOW + 1)).await.unwrap();
    store.lock_credential("c2", "counter regression", NOW + 2).await.unwrap();
    // c1 is the only active credential left: refused.
    assert!(matches!(store.revoke_credential("c1", NOW + 3).await, Err(StoreError::Conflict(_))));
    // Removing the locked one leaves c1 active: allowed.
    store.revoke_credential("c2", NOW + 3).await.unwrap();
    assert_eq!(store.credential("c2").await.unwrap().unwrap().revoked_at, Some(NOW + 3));
}

#[tokio::test]
async fn revoking_a_credential_ends_its_sessions_and_tokens() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_credential(&credential("c2", "u1", NOW + 1)).await.unwrap();
    store.create_session(&session("s2", "u1", "c2")).await.unwrap();
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    store.insert_refresh_token("r2", "f2", "s2", NOW + 100, NOW).await.unwrap();

    store.revoke_credential("c1", NOW + 5).await.unwrap();
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, Some(NOW + 5));
    assert_eq!(store.use_refresh_token("r1", NOW + 6).await.unwrap(), RefreshUse::Revoked { family_id: "f1".into() });
    // The other credential's session is untouched.
    assert_eq!(store.session("s2").await.unwrap().unwrap().revoked_at, None);
    assert!(matches!(store.use_refresh_token("r2", NOW + 6).await.unwrap(), RefreshUse::Valid { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_revocations_never_leave_a_user_without_an_active_credential() {
    let (_dir, store) = open().await;
    store.create_user(&user("u1", "alice")).await.unwrap();
    let ids: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        store.insert_credential(&credential(id, "u1", NOW + i as i64)).await.unwrap();
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.revoke_credential(&id, NOW + 10).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(store.active_credentials_of("u1").await.unwrap().len(), 1);
}

#[tokio::test]
async fn locking_keeps_the_first_reason_and_ends_sessions() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    // Locking is allowed even for the last active credential.
    store.lock_credential("c1", "counter regression", NOW + 1).await.unwrap();
    store.lock_credential("c1", "second reason", NOW + 2).await.unwrap();
    let c1 = store.credential("c1").await.unwrap().unwrap();
    assert_eq!((c1.locked_at, c1.lock_reason.as_deref()), (Some(NOW + 1), Some("counter regression")));
    assert!(!c1.is_active());
    assert!(store.active_credentials_of("u1").await.unwrap().is_empty());
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, Some(NOW + 1));
    assert_eq!(store.use_refresh_token("r1", NOW + 3).await.unwrap(), RefreshUse::Revoked { family_id: "f1".into() });
    assert!(matches!(store.lock_credential("zz", "x", NOW).await, Err(StoreError::NotFound(_))));
}

// ---------------------------------------------------------------------------------------------
// Ceremonies

#[tokio::test]
async fn a_ceremony_is_taken_once() {
    let (_dir, store) = open().await;
    let c = ceremony("k1", "register", NOW + 300);
    store.put_ceremony(&c).await.unwrap();
    assert!(matches!(store.put_ceremony(&c).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.take_ceremony("k1", "register", NOW).await.unwrap(), Some(c));
    assert_eq!(store.take_ceremony("k1", "register", NOW).await.unwrap(), None);
    assert_eq!(store.take_ceremony("unknown", "register", NOW).await.unwrap(), None);
}

#[tokio::test]
async fn a_wrong_kind_or_late_take_fails_and_burns_the_ceremony() {
    let (_dir, store) = open().await;
    store.put_ceremony(&ceremony("k1", "register", NOW + 300)).await.unwrap();
    assert_eq!(store.take_ceremony("k1", "authenticate", NOW).await.unwrap(), None);
    assert_eq!(store.take_ceremony("k1", "register", NOW).await.unwrap(), None, "wrong kind deleted it");

    store.put_ceremony(&ceremony("k2", "register", NOW + 300)).await.unwrap();
    assert_eq!(store.take_ceremony("k2", "register", NOW + 300).await.unwrap(), None, "expired at expires_at");
    store.put_ceremony(&ceremony("k2", "register", NOW + 300)).await.unwrap(); // the id is free again
}

#[tokio::test]
async fn expired_ceremonies_are_purged() {
    let (_dir, store) = open().await;
    store.put_ceremony(&ceremony("old", "register", NOW)).await.unwrap();
    store.put_ceremony(&ceremony("older", "register", NOW - 5)).await.unwrap();
    store.put_ceremony(&ceremony("live", "register", NOW + 1)).await.unwrap();
    assert_eq!(store.purge_expired_ceremonies(NOW).await.unwrap(), 2);
    assert!(store.take_ceremony("live", "register", NOW).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_takes_of_one_ceremony_succeed_once() {
    let (_dir, store) = open().await;
    for round in 0..5 {
        let id = format!("race{round}");
        store.put_ceremony(&ceremony(&id, "authenticate", NOW + 300)).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move { store.take_ceremony(&id, "authenticate", NOW).await.unwrap() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap().is_some() {
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------
// Enrollment links

#[tokio::test]
async fn an_enrollment_link_is_consumed_once_and_only_before_expiry() {
    let (_dir, store) = open().await;
    let link = enroll_link("h1", NOW + 3600);
    store.create_enroll_link(&link).await.unwrap();
    assert!(matches!(store.create_enroll_link(&link).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.enroll_link("h1").await.unwrap(), Some(link));
    assert_eq!(store.enroll_link("nope").await.unwrap(), None);

    assert!(store.consume_enroll_link("h1", NOW + 10).await.unwrap());
    assert!(!store.consume_enroll_link("h1", NOW + 11).await.unwrap());
    assert_eq!(store.enroll_link("h1").await.unwrap().unwrap().used_at, Some(NOW + 10));
    assert!(!store.consume_enroll_link("nope", NOW).await.unwrap());

    store.create_enroll_link(&enroll_link("h2", NOW + 3600)).await.unwrap();
    assert!(!store.consume_enroll_link("h2", NOW + 3600).await.unwrap(), "expired at expires_at");
    assert_eq!(store.enroll_link("h2").await.unwrap().unwrap().used_at, None);
}

#[tokio::test]
async fn a_re_enrollment_link_names_an_existing_user() {
    let (_dir, store) = open().await;
    store.create_user(&user("u1", "alice")).await.unwrap();
    let mut link = enroll_link("h1", NOW + 3600);
    link.user_id = Some("u1".into());
    link.vault = Some("db".into());
    store.create_enroll_link(&link).await.unwrap();
    assert_eq!(store.enroll_link("h1").await.unwrap(), Some(link.clone()));
    link.token_hash = "h2".into();
    link.user_id = Some("nobody".into());
    assert!(matches!(store.create_enroll_link(&link).await, Err(StoreError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_consumptions_of_one_link_succeed_once() {
    let (_dir, store) = open().await;
    store.create_enroll_link(&enroll_link("h1", NOW + 3600)).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_enroll_link("h1", NOW).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
}

// ---------------------------------------------------------------------------------------------
// Sessions and refresh tokens

#[tokio::test]
async fn sessions_are_created_read_and_revoked() {
    let (_dir, store) = open().await;
    alice(&store).await;
    assert_eq!(store.session("s1").await.unwrap(), Some(session("s1", "u1", "c1")));
    assert_eq!(store.session("nope").await.unwrap(), None);
    assert!(matches!(store.create_session(&session("s1", "u1", "c1")).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.create_session(&session("s9", "u1", "zz")).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.create_session(&session("s9", "nobody", "c1")).await, Err(StoreError::NotFound(_))));

    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    assert!(store.revoke_session("s1", NOW + 1).await.unwrap());
    assert!(!store.revoke_session("s1", NOW + 2).await.unwrap());
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, Some(NOW + 1));
    assert_eq!(store.use_refresh_token("r1", NOW + 3).await.unwrap(), RefreshUse::Revoked { family_id: "f1".into() });
    assert!(matches!(store.revoke_session("nope", NOW).await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn revoking_a_users_sessions_ends_all_of_them_and_their_tokens() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.create_session(&session("s2", "u1", "c1")).await.unwrap();
    store.create_user(&user("u2", "bob")).await.unwrap();
    store.insert_credential(&credential("c9", "u2", NOW)).await.unwrap();
    store.create_session(&session("s9", "u2", "c9")).await.unwrap();
    store.insert_refresh_token("r2", "f2", "s2", NOW + 100, NOW).await.unwrap();

    assert_eq!(store.revoke_sessions_of_user("u1", NOW + 1).await.unwrap(), 2);
    assert_eq!(store.revoke_sessions_of_user("u1", NOW + 2).await.unwrap(), 0);
    assert_eq!(store.session("s2").await.unwrap().unwrap().revoked_at, Some(NOW + 1));
    assert_eq!(store.session("s9").await.unwrap().unwrap().revoked_at, None);
    assert_eq!(store.use_refresh_token("r2", NOW + 3).await.unwrap(), RefreshUse::Revoked { family_id: "f2".into() });
}

#[tokio::test]
async fn revoking_a_credentials_sessions_ends_them_and_their_tokens() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_credential(&credential("c2", "u1", NOW + 1)).await.unwrap();
    store.create_session(&session("s2", "u1", "c2")).await.unwrap();
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();

    assert_eq!(store.revoke_sessions_of_credential("c1", NOW + 1).await.unwrap(), 1);
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, Some(NOW + 1));
    assert_eq!(store.session("s2").await.unwrap().unwrap().revoked_at, None);
    assert_eq!(store.use_refresh_token("r1", NOW + 2).await.unwrap(), RefreshUse::Revoked { family_id: "f1".into() });
    // The credential itself stays usable.
    assert!(store.credential("c1").await.unwrap().unwrap().is_active());
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reuse_revokes_the_family_and_session() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    assert_eq!(
        store.use_refresh_token("r1", NOW + 1).await.unwrap(),
        RefreshUse::Valid { family_id: "f1".into(), session_id: "s1".into() }
    );
    store.insert_refresh_token("r2", "f1", "s1", NOW + 101, NOW + 1).await.unwrap();

    // The old token comes back: theft. The family and the session end.
    assert_eq!(store.use_refresh_token("r1", NOW + 2).await.unwrap(), RefreshUse::Reused { family_id: "f1".into() });
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, Some(NOW + 2));
    // The successor, never used, is now dead too.
    assert_eq!(store.use_refresh_token("r2", NOW + 3).await.unwrap(), RefreshUse::Revoked { family_id: "f1".into() });
    // A third use of the stolen token is still reuse.
    assert_eq!(store.use_refresh_token("r1", NOW + 4).await.unwrap(), RefreshUse::Reused { family_id: "f1".into() });
    // No new token can join the revoked family or session.
    let err = store.insert_refresh_token("r3", "f1", "s1", NOW + 200, NOW + 5).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn refresh_tokens_expire_and_unknown_ones_are_reported() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    assert_eq!(store.use_refresh_token("r1", NOW + 100).await.unwrap(), RefreshUse::Expired);
    assert_eq!(store.use_refresh_token("nope", NOW).await.unwrap(), RefreshUse::Unknown);
    assert!(matches!(store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await, Err(StoreError::Conflict(_))));

    // A live token on an expired session is not spent.
    store.insert_refresh_token("r2", "f2", "s1", NOW + 7200, NOW).await.unwrap();
    assert_eq!(store.use_refresh_token("r2", NOW + 3600).await.unwrap(), RefreshUse::Expired);
}

#[tokio::test]
async fn refresh_tokens_need_a_live_session_of_their_family() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.create_session(&session("s2", "u1", "c1")).await.unwrap();
    assert!(matches!(
        store.insert_refresh_token("r1", "f1", "nope", NOW + 100, NOW).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW + 3600).await,
        Err(StoreError::Conflict(_))
    ));
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    // A family belongs to one session.
    assert!(matches!(store.insert_refresh_token("r2", "f1", "s2", NOW + 100, NOW).await, Err(StoreError::Conflict(_))));
    store.revoke_session("s2", NOW).await.unwrap();
    assert!(matches!(store.insert_refresh_token("r3", "f3", "s2", NOW + 100, NOW).await, Err(StoreError::Conflict(_))));
}

#[tokio::test]
async fn revoking_a_family_ends_its_tokens_and_session() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    store.revoke_family("f1", NOW + 1).await.unwrap();
    store.revoke_family("unknown", NOW + 1).await.unwrap();
    assert_eq!(store.use_refresh_token("r1", NOW + 2).await.unwrap(), RefreshUse::Revoked { family_id: "f1".into() });
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, Some(NOW + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_uses_of_one_refresh_token_yield_one_valid_and_revoke_the_family() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.insert_refresh_token("r1", "f1", "s1", NOW + 100, NOW).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.use_refresh_token("r1", NOW + 1).await.unwrap() })
        })
        .collect();
    let mut valid = 0;
    for t in tasks {
        match t.await.unwrap() {
            RefreshUse::Valid { .. } => valid += 1,
            RefreshUse::Reused { family_id } => assert_eq!(family_id, "f1"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(valid, 1);
    assert!(store.session("s1").await.unwrap().unwrap().revoked_at.is_some());
}

// ---------------------------------------------------------------------------------------------
// Device authorization

#[tokio::test]
async fn device_codes_are_stored_and_found_by_user_code_and_hash() {
    let (_dir, store) = open().await;
    let d = device_code("dh1", "ABCD-EFGH");
    store.create_device_code(&d).await.unwrap();
    assert_eq!(store.device_by_user_code("ABCD-EFGH").await.unwrap(), Some(d.clone()));
    assert_eq!(store.device_by_hash("dh1").await.unwrap(), Some(d.clone()));
    assert_eq!(store.device_by_hash("nope").await.unwrap(), None);
    let mut same_user_code = device_code("dh2", "ABCD-EFGH");
    assert!(matches!(store.create_device_code(&same_user_code).await, Err(StoreError::Conflict(_))));
    same_user_code.user_code = "WXYZ-WXYZ".into();
    same_user_code.status = "bogus".into();
    assert!(matches!(store.create_device_code(&same_user_code).await, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn device_polling_honours_slow_down_and_hands_out_an_approval_once() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.create_device_code(&device_code("dh1", "ABCD-EFGH")).await.unwrap();

    assert_eq!(store.poll_device("dh1", NOW).await.unwrap(), DevicePoll::Pending);
    assert_eq!(store.poll_device("dh1", NOW + 4).await.unwrap(), DevicePoll::SlowDown);
    let d = store.device_by_hash("dh1").await.unwrap().unwrap();
    assert_eq!((d.interval, d.last_poll_at), (10, Some(NOW + 4)));
    // 9 s after the last poll is still too soon for the grown interval.
    assert_eq!(store.poll_device("dh1", NOW + 13).await.unwrap(), DevicePoll::SlowDown);
    assert_eq!(store.device_by_hash("dh1").await.unwrap().unwrap().interval, 15);
    assert_eq!(store.poll_device("dh1", NOW + 28).await.unwrap(), DevicePoll::Pending);

    assert!(store.approve_device("ABCD-EFGH", "u1", "s1", NOW + 30).await.unwrap());
    assert!(!store.approve_device("ABCD-EFGH", "u1", "s1", NOW + 31).await.unwrap(), "already approved");
    assert!(!store.deny_device("ABCD-EFGH", "u1", NOW + 31).await.unwrap(), "approved codes cannot be denied");
    assert_eq!(
        store.poll_device("dh1", NOW + 43).await.unwrap(),
        DevicePoll::Approved { user_id: "u1".into(), session_id: "s1".into() }
    );
    assert_eq!(store.poll_device("dh1", NOW + 60).await.unwrap(), DevicePoll::Consumed);
    assert_eq!(store.device_by_hash("dh1").await.unwrap().unwrap().status, "consumed");
    assert_eq!(store.poll_device("nope", NOW).await.unwrap(), DevicePoll::Unknown);
}

#[tokio::test]
async fn device_codes_expire_and_can_be_denied() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.create_device_code(&device_code("dh1", "AAAA-AAAA")).await.unwrap();
    store.create_device_code(&device_code("dh2", "BBBB-BBBB")).await.unwrap();
    store.create_device_code(&device_code("dh3", "CCCC-CCCC")).await.unwrap();

    // Only the user who claimed a code may deny it.
    assert!(!store.deny_device("AAAA-AAAA", "u1", NOW).await.unwrap(), "unclaimed");
    assert!(store.claim_device("AAAA-AAAA", "u1", NOW).await.unwrap());
    store.create_user(&user("u2", "mallory")).await.unwrap();
    assert!(!store.claim_device("AAAA-AAAA", "u2", NOW).await.unwrap(), "claimed by another");
    assert!(!store.deny_device("AAAA-AAAA", "u2", NOW).await.unwrap());
    assert!(store.deny_device("AAAA-AAAA", "u1", NOW).await.unwrap());
    assert!(!store.deny_device("AAAA-AAAA", "u1", NOW).await.unwrap());
    assert!(!store.approve_device("AAAA-AAAA", "u1", "s1", NOW).await.unwrap(), "denied codes cannot be approved");
    assert_eq!(store.poll_device("dh1", NOW).await.unwrap(), DevicePoll::Denied);

    assert!(!store.approve_device("BBBB-BBBB", "u1", "s1", NOW + 600).await.unwrap(), "expired at expires_at");
    assert!(!store.claim_device("BBBB-BBBB", "u1", NOW + 600).await.unwrap());
    assert!(!store.deny_device("BBBB-BBBB", "u1", NOW + 600).await.unwrap());
    assert_eq!(store.poll_device("dh2", NOW + 600).await.unwrap(), DevicePoll::Expired);

    // Approved but never collected before expiry: expired.
    assert!(store.approve_device("CCCC-CCCC", "u1", "s1", NOW + 10).await.unwrap());
    assert_eq!(store.poll_device("dh3", NOW + 600).await.unwrap(), DevicePoll::Expired);

    assert!(!store.approve_device("ZZZZ-ZZZZ", "u1", "s1", NOW).await.unwrap());
    store.create_device_code(&device_code("dh4", "DDDD-DDDD")).await.unwrap();
    assert!(matches!(store.approve_device("DDDD-DDDD", "nobody", "s1", NOW).await, Err(StoreError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_polls_of_an_approved_code_collect_it_once() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.create_device_code(&device_code("dh1", "ABCD-EFGH")).await.unwrap();
    assert!(store.approve_device("ABCD-EFGH", "u1", "s1", NOW).await.unwrap());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.poll_device("dh1", NOW + 1).await.unwrap() })
        })
        .collect();
    let (mut approved, mut consumed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            DevicePoll::Approved { .. } => approved += 1,
            DevicePoll::Consumed => consumed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((approved, consumed), (1, 19));
}

// ---------------------------------------------------------------------------------------------
// Audit

#[tokio::test]
async fn audit_events_get_consecutive_numbers_and_page_in_order() {
    let (_dir, store) = open().await;
    for i in 1..=5 {
        assert_eq!(store.append_audit(&event(&format!("e{i}"))).await.unwrap(), i);
    }
    let page = store.audit_events(0, 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(page[0].event, event("e1"));
    let rest = store.audit_events(2, 100).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.event.kind.as_str()).collect::<Vec<_>>(), ["e3", "e4", "e5"]);
    assert!(store.audit_events(5, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_audit_appends_are_gapless_and_distinct() {
    let (_dir, store) = open().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append_audit(&event(&format!("e{i}"))).await.unwrap() })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    assert_eq!(store.audit_events(0, 100).await.unwrap().len(), 20);
}

#[tokio::test]
async fn housekeeping_purges_what_expired_and_keeps_what_is_live() {
    let (_dir, store) = open().await;
    alice(&store).await; // session s1 expires at NOW + 3600
    store
        .create_session(&Session { id: "s2".into(), expires_at: NOW + 90_000, ..session("s2", "u1", "c1") })
        .await
        .unwrap();
    for i in 0..100 {
        store.put_ceremony(&ceremony(&format!("old{i}"), "login", NOW + 300)).await.unwrap();
    }
    store.put_ceremony(&ceremony("live", "login", NOW + 10_000)).await.unwrap();
    // Nothing has expired yet.
    assert_eq!(store.purge_expired(NOW, 3600).await.unwrap().total(), 0);
    let p = store.purge_expired(NOW + 3600 + 3600, 3600).await.unwrap();
    assert_eq!((p.ceremonies, p.sessions), (100, 1), "{p:?}");
    assert!(store.session("s2").await.unwrap().is_some(), "a live session stays");
    assert!(store.session("s1").await.unwrap().is_none());
    assert!(store.take_ceremony("live", "login", NOW + 7200).await.unwrap().is_some());
}

#[tokio::test]
async fn introductions_record_who_made_the_link_first() {
    let (_dir, store) = open().await;
    alice(&store).await;
    store.record_introduction("user", "u1", "owner", NOW).await.unwrap();
    store.record_introduction("user", "u1", "someone-else", NOW + 1).await.unwrap();
    store.record_introduction("credential", "c1", "mallory", NOW).await.unwrap();
    let mut by = store.introducers("u1", Some("c1")).await.unwrap();
    by.sort();
    assert_eq!(by, vec!["mallory".to_string(), "owner".to_string()]);
    assert_eq!(store.introducers("u1", None).await.unwrap(), vec!["owner".to_string()]);
}
