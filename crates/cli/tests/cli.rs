//! The `strongroom` binary as a user runs it: help, exit codes, clear errors, first start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

fn strongroom() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    c.env_remove("STRONGROOM_SERVER").env_remove("STRONGROOM_TOKEN").env_remove("STRONGROOM_CONFIG");
    c
}

#[test]
fn help_teaches_and_bad_usage_exits_2() {
    let out = strongroom().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in
        ["server", "login", "whoami", "vault", "role", "policy", "audit", "forget", "prune", "admin", "Exit codes"]
    {
        assert!(text.contains(word), "--help lacks {word}");
    }
    assert_eq!(strongroom().arg("frobnicate").output().unwrap().status.code(), Some(2));
}

#[test]
fn client_commands_without_a_login_say_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let out = strongroom().env("XDG_CONFIG_HOME", home.path()).arg("whoami").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("strongroom login"), "{err}");
}

#[test]
fn admin_commands_refuse_bad_input_and_missing_data() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        strongroom().args(["admin", "enroll-link", "--user", "alice", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no server data"));
    let out = strongroom().args(["admin", "enroll-link", "--user", "al ice", "--role", "reader"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = strongroom().args(["admin", "enroll-link", "--user", "alice", "--role", "emperor"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
}

#[test]
fn first_start_prints_the_enrollment_link_alone_on_stdout_and_refuses_public_plain_http() {
    let s = start_server();
    assert!(s.first_link.starts_with(&format!("{}/enroll/", s.base)), "{}", s.first_link);
    let dir = &s.dir;
    use std::os::unix::fs::PermissionsExt;
    for f in ["metadata.db", "keys/token-signing.json", "keys/master.key"] {
        let mode = std::fs::metadata(dir.path().join("data").join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let out = strongroom()
        .args(["server", "--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(dir.path().join("d2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve plain HTTP"));
}

/// A running `strongroom server` for end-to-end tests.
struct Server {
    child: std::process::Child,
    base: String,
    port: u16,
    dir: tempfile::TempDir,
    first_link: String,
    extra: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    start_server_with(&[])
}

fn server_command(dir: &std::path::Path, port: u16, base: &str, extra: &[String]) -> Command {
    let mut c = strongroom();
    c.args(["server", "--listen", &format!("127.0.0.1:{port}"), "--public-url", base])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// Starts a server on a fresh data directory with `extra` flags; waits for its first link.
fn start_server_with(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://localhost:{port}");
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let mut child = server_command(dir.path(), port, &base, &extra).spawn().unwrap();
    let mut first_link = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first_link).unwrap();
    Server { child, base, port, dir, first_link: first_link.trim().to_string(), extra }
}

impl Server {
    /// Kills the server process outright (SIGKILL: no shutdown, no flushing).
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts it again on the same data directory and port; waits until it answers.
    fn restart(&mut self) {
        self.child = server_command(self.dir.path(), self.port, &self.base, &self.extra).spawn().unwrap();
        for _ in 0..500 {
            if reqwest::blocking::get(format!("{}/healthz", self.base)).is_ok_and(|r| r.status().is_success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the restarted server did not answer");
    }
}

/// Starts `strongroom … restore ARGS --target TARGET`; returns it, its stdout, and the approval
/// URL it printed first.
fn spawn_restore(
    mut cmd: Command,
    args: &[&str],
    target: &std::path::Path,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>, String) {
    cmd.arg("restore").args(args).arg("--target").arg(target);
    spawn_first_line(cmd)
}

/// Starts `cmd` with piped output; returns it, its stdout and the first line it printed.
fn spawn_first_line(mut cmd: Command) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut url).unwrap();
    (child, stdout, url.trim().to_string())
}

/// The software passkey file of whoever enrolled from `link` (one per link).
fn key_path(s: &Server, link: &str) -> std::path::PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    link.hash(&mut h);
    s.dir.path().join(format!("{:016x}.key", h.finish()))
}

/// Enrolls a software passkey from `link` and signs in; returns an access token.
fn enroll_and_token(s: &Server, link: &str) -> String {
    let key = key_path(s, link);
    let softkey = std::path::Path::new(env!("CARGO_BIN_EXE_strongroom")).with_file_name("strongroom-softkey");
    let run = |args: &[&str]| {
        let out = Command::new(&softkey)
            .arg("--key")
            .arg(&key)
            .args(args)
            .output()
            .expect("strongroom-softkey is built with the workspace");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    run(&["enroll", link]);
    run(&["login", "--server", &s.base])
}

fn client(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    strongroom()
        .env("XDG_CONFIG_HOME", s.dir.path())
        .args(["--server", &s.base, "--token", token])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn backup_through_the_server_stores_exactly_the_files_and_the_next_backup_reads_only_changes() {
    let s = start_server();
    let token = enroll_and_token(&s, &s.first_link);
    // Retention 0: no soft delete and no protection, so `forget` below removes at once.
    let out = client(&s, &token, &["vault", "create", "lab", "--retention-days", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let src = s.dir.path().join("src");
    testkit::make_tree(&src);
    testkit::make_sparse_image(
        &src.join("disk.img"),
        64 << 20,
        &[(1 << 20)..(1 << 20) + 300_000, (40 << 20)..(42 << 20)],
    );
    let out = client(&s, &token, &["backup", "--vault", "lab", "--json"]);
    assert_eq!(out.status.code(), Some(2), "paths are required");
    let out = client(&s, &token, &["backup", "--vault", "lab", "--json", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Change one file; the next backup reads just that one.
    std::fs::write(src.join("changed.txt"), b"new contents").unwrap();
    let out = client(&s, &token, &["backup", "--vault", "lab", "--json", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(second["summary"]["files_read"], 1, "{second}");
    let out = client(&s, &token, &["snapshots", "--vault", "lab", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter().any(|x| x["id"] == second["snapshot_id"]) && list.iter().any(|x| x["id"] == first["snapshot_id"])
    );
    assert!(list.iter().all(|x| x["time"].is_string() && x["paths"][0] == src.to_str().unwrap()));
    assert_ne!(first["snapshot_id"], second["snapshot_id"]);

    // The server's check, reading every byte.
    let out = client(&s, &token, &["check", "--vault", "lab", "--read-data", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]));
    assert!(report["blobs_verified"].as_u64().unwrap() > 5, "{report}");
    // What the server stored restores byte-identical (read with the engine and the master key).
    let data = s.dir.path().join("data");
    let master = repo::crypto::MasterKey::load(&data.join("keys/master.key")).unwrap();
    let backend = std::sync::Arc::new(repo::ObjectStoreBackend::local(&data.join("vaults/lab")).unwrap());
    let r = repo::Repository::open(backend, &master, repo::SharedRng::os()).unwrap();
    let (_, snap) = r.find_snapshot(second["snapshot_id"].as_str().unwrap()).unwrap();
    let target = s.dir.path().join("restored");
    repo::restore::restore(&r, &snap, &target, &Default::default(), &Default::default()).unwrap();
    testkit::assert_trees_equal(&src, &target.join("src"));
    assert!(repo::check::check(&r, true).unwrap().ok());

    // Retention on the server: a dry run deletes nothing, then keep the newest and prune.
    let out = client(&s, &token, &["forget", "--vault", "lab"]);
    assert_eq!(out.status.code(), Some(1), "no rule is refused");
    let out = client(&s, &token, &["forget", "--vault", "lab", "--keep-last", "1", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("1 kept, 1 would be removed"), "{text}");
    let out = client(&s, &token, &["forget", "--vault", "lab", "--keep-last", "1", "--prune"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1 kept, 1 removed") && text.contains("prune: "), "{text}");
    let out = client(&s, &token, &["snapshots", "--vault", "lab", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], second["snapshot_id"]);
    let out = client(&s, &token, &["prune", "--vault", "lab", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["blobs_removed"], 0, "nothing left to prune: {report}");
    assert!(client(&s, &token, &["check", "--vault", "lab", "--read-data"]).status.success());

    // Key rotation: new data under version 2, old packs rewrapped, everything still reads.
    let rotated = json_of(&client(&s, &token, &["vault", "rotate-key", "lab", "--json"]));
    assert_eq!(rotated["new_version"], 2, "{rotated}");
    std::fs::write(src.join("after-rotation.txt"), b"written under the new key").unwrap();
    let third = json_of(&client(&s, &token, &["backup", "--vault", "lab", "--json", src.to_str().unwrap()]));
    assert!(client(&s, &token, &["check", "--vault", "lab", "--read-data"]).status.success());
    let r = open_vault(&s, "lab");
    assert_eq!(r.current_kek().0, 2);
    assert!(r.index().packs().iter().all(|p| p.kek_version == 2));
    assert_snapshot_restores(&r, third["snapshot_id"].as_str().unwrap(), &src, &s.dir.path().join("r3"));
}

#[test]
fn backup_needs_a_role_that_allows_it() {
    let s = start_server();
    let owner = enroll_and_token(&s, &s.first_link);
    assert!(client(&s, &owner, &["vault", "create", "prod", "--kind", "production"]).status.success());
    let out = strongroom()
        .args(["admin", "enroll-link", "--user", "rita", "--role", "reader"])
        .arg("--data-dir")
        .arg(s.dir.path().join("data"))
        .output()
        .unwrap();
    let rita = enroll_and_token(&s, String::from_utf8(out.stdout).unwrap().trim());
    let src = s.dir.path().join("src");
    testkit::make_tree(&src);
    let out = client(&s, &rita, &["backup", "--vault", "prod", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy.no_role"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restore_waits_for_another_persons_passkey_approval_then_restores_byte_identical() {
    let s = start_server();
    let owner = enroll_and_token(&s, &s.first_link);
    assert!(client(&s, &owner, &["vault", "create", "prod", "--kind", "production"]).status.success());
    let src = s.dir.path().join("src");
    testkit::make_tree(&src);
    testkit::make_sparse_image(&src.join("disk.img"), 64 << 20, &[(1 << 20)..(2 << 20), (20 << 20)..(20 << 20) + 4096]);
    let out = client(&s, &owner, &["backup", "--vault", "prod", "--json", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Alice is the vault's restore operator; she approves with her own passkey.
    let out = strongroom()
        .args(["admin", "enroll-link", "--user", "alice", "--role", "reader"])
        .arg("--data-dir")
        .arg(s.dir.path().join("data"))
        .output()
        .unwrap();
    let alice_link = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let alice_key = s.dir.path().join("alice.key");
    let softkey = std::path::Path::new(env!("CARGO_BIN_EXE_strongroom")).with_file_name("strongroom-softkey");
    assert!(Command::new(&softkey)
        .arg("--key")
        .arg(&alice_key)
        .args(["enroll", &alice_link])
        .output()
        .unwrap()
        .status
        .success());
    assert!(client(
        &s,
        &owner,
        &["role", "assign", "--user", "alice", "--role", "restore-operator", "--vault", "prod"]
    )
    .status
    .success());

    let target = s.dir.path().join("restored");
    let mut cmd = strongroom();
    cmd.env("XDG_CONFIG_HOME", s.dir.path()).args(["--server", &s.base, "--token", &owner]);
    let (mut restore, mut stdout, url) = spawn_restore(cmd, &["--vault", "prod", "latest", "--json"], &target);
    assert!(url.starts_with(&format!("{}/approvals/", s.base)), "{url}");
    // Nothing is restored before the approval.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!target.join("src").exists());
    // The requester cannot approve their own production restore.
    assert!(client(
        &s,
        &owner,
        &["role", "assign", "--user", "owner", "--role", "restore-operator", "--vault", "prod"]
    )
    .status
    .success());
    let owner_key = key_path(&s, &s.first_link);
    let out = Command::new(&softkey)
        .arg("--key")
        .arg(&owner_key)
        .args(["approve", &url, "--username", "owner"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy.self_approval"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&softkey)
        .arg("--key")
        .arg(&alice_key)
        .args(["approve", &url, "--username", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = restore.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut restore.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&rest).unwrap();
    assert!(summary["files"].as_u64().unwrap() > 5, "{summary}");
    testkit::assert_trees_equal(&src, &target.join("src"));
    // The restored image is still sparse.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(target.join("src/disk.img")).unwrap();
    assert!(m.blocks() * 512 < m.len() / 4, "holes were recreated");

    // The whole story is in the audit log, and an auditor verifies it offline: the tree, the
    // signed checkpoint and alice's passkey signature on this exact restore.
    let export = s.dir.path().join("audit-export");
    let out = client(&s, &owner, &["audit", "export", "--out", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vkey = reqwest::blocking::get(format!("{}/api/v1/audit/key", s.base)).unwrap().text().unwrap();
    let own_key = s.dir.path().join("my-copy.vkey");
    std::fs::write(&own_key, vkey).unwrap();
    let verify = |extra: &[&str]| {
        strongroom().args(["audit", "verify", export.to_str().unwrap(), "--json"]).args(extra).output().unwrap()
    };
    let out = verify(&["--vkey", own_key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["report"]["approvals_verified"].as_u64().unwrap() >= 1, "{v}");
    let kinds = std::fs::read_to_string(export.join("records.jsonl")).unwrap();
    for kind in ["\"enroll\"", "\"backup.commit\"", "\"restore.request\"", "\"restore.approve\"", "\"restore.finish\""]
    {
        assert!(kinds.contains(kind), "{kind} is not in the log");
    }
    // People read the same log with `audit tail`.
    let out = client(&s, &owner, &["audit", "tail", "-n", "500"]);
    let tail = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && tail.lines().count() >= 20, "{tail}");
    assert!(tail.contains("restore.approve") && tail.contains("[passkey-signed]"), "{tail}");
    // Change one byte of one record: the verifier refuses and says where.
    let tampered = kinds.replacen("\"outcome\":\"success\"", "\"outcome\":\"failure\"", 1);
    std::fs::write(export.join("records.jsonl"), tampered).unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["problem"]["record"].is_u64(), "{v}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does NOT verify"));
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Opens a vault's repository straight from the server's data directory (engine + master key).
fn open_vault(s: &Server, vault: &str) -> repo::Repository {
    let data = s.dir.path().join("data");
    let master = repo::crypto::MasterKey::load(&data.join("keys/master.key")).unwrap();
    let backend = std::sync::Arc::new(repo::ObjectStoreBackend::local(&data.join("vaults").join(vault)).unwrap());
    repo::Repository::open(backend, &master, repo::SharedRng::os()).unwrap()
}

fn assert_snapshot_restores(r: &repo::Repository, id: &str, original: &std::path::Path, scratch: &std::path::Path) {
    let (_, snap) = r.find_snapshot(id).unwrap();
    let _ = std::fs::remove_dir_all(scratch);
    repo::restore::restore(r, &snap, scratch, &Default::default(), &Default::default()).unwrap();
    testkit::assert_trees_equal(original, &scratch.join(original.file_name().unwrap()));
}

#[test]
fn killing_the_server_mid_backup_loses_nothing_committed_and_the_next_backup_resumes() {
    // An index checkpoint after every 16 MiB pack.
    let mut s = start_server_with(&["--checkpoint-packs", "1"]);
    let token = enroll_and_token(&s, &s.first_link);
    assert!(client(&s, &token, &["vault", "create", "lab"]).status.success());
    let small = s.dir.path().join("small");
    testkit::make_tree(&small);
    let first = json_of(&client(&s, &token, &["backup", "--vault", "lab", "--json", small.to_str().unwrap()]));
    let big = s.dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..8u64 {
        std::fs::write(big.join(format!("part{i}.bin")), testkit::random_bytes(100 + i, 8 << 20)).unwrap();
    }
    let total: u64 = 64 << 20;

    // A slow upload (16 MiB/s), so the server dies in the middle of it.
    let index_dir = s.dir.path().join("data/vaults/lab/index");
    let before = count_files(&index_dir);
    let backup = strongroom()
        .env("XDG_CONFIG_HOME", s.dir.path())
        .args(["--server", &s.base, "--token", &token])
        .args(["backup", "--vault", "lab", "--json", "--limit-upload", "16"])
        .arg(&big)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while count_files(&index_dir) < before + 2 {
        assert!(std::time::Instant::now() < deadline, "no checkpoints appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    s.kill();
    let out = backup.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the backup cannot have completed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run the same command again to resume"), "{err}");

    // After a restart: the committed snapshot is whole, and the next backup sends only the rest.
    s.restart();
    let out = client(&s, &token, &["check", "--vault", "lab", "--read-data"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let again = json_of(&client(&s, &token, &["backup", "--vault", "lab", "--json", big.to_str().unwrap()]));
    let uploaded = again["uploaded_bytes"].as_u64().unwrap();
    assert!(uploaded + (30 << 20) < total, "the resumed backup uploaded {uploaded} of {total} bytes");
    let r = open_vault(&s, "lab");
    assert_snapshot_restores(&r, first["snapshot_id"].as_str().unwrap(), &small, &s.dir.path().join("r1"));
    assert_snapshot_restores(&r, again["snapshot_id"].as_str().unwrap(), &big, &s.dir.path().join("r2"));
    assert!(repo::check::check(&r, true).unwrap().ok());
}

#[test]
fn concurrent_backups_to_one_vault_both_commit_and_restore() {
    let s = start_server();
    let token = enroll_and_token(&s, &s.first_link);
    assert!(client(&s, &token, &["vault", "create", "lab"]).status.success());
    // Two trees sharing most of their data, backed up at the same time.
    let (a, b) = (s.dir.path().join("a"), s.dir.path().join("b"));
    for (dir, own) in [(&a, 1u64), (&b, 2u64)] {
        testkit::make_tree(dir);
        std::fs::write(dir.join("shared.bin"), testkit::random_bytes(9, 24 << 20)).unwrap();
        std::fs::write(dir.join("own.bin"), testkit::random_bytes(own, 4 << 20)).unwrap();
    }
    let spawn = |dir: &std::path::Path| {
        strongroom()
            .env("XDG_CONFIG_HOME", s.dir.path())
            .args(["--server", &s.base, "--token", &token, "backup", "--vault", "lab", "--json"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    let (ra, rb) = (json_of(&ca.wait_with_output().unwrap()), json_of(&cb.wait_with_output().unwrap()));
    assert_ne!(ra["snapshot_id"], rb["snapshot_id"]);
    let out = client(&s, &token, &["check", "--vault", "lab", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let r = open_vault(&s, "lab");
    assert_snapshot_restores(&r, ra["snapshot_id"].as_str().unwrap(), &a, &s.dir.path().join("ra"));
    assert_snapshot_restores(&r, rb["snapshot_id"].as_str().unwrap(), &b, &s.dir.path().join("rb"));
    // Racing uploads of the shared data may store it twice; prune folds it back.
    assert!(client(&s, &token, &["prune", "--vault", "lab"]).status.success());
    let out = client(&s, &token, &["check", "--vault", "lab", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Runs the CLI with the stored login under `home` (no explicit token: it refreshes itself).
fn client_as(s: &Server, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    strongroom().env("XDG_CONFIG_HOME", home).args(["--server", &s.base]).args(args).output().unwrap()
}

fn softkey(key: &std::path::Path, args: &[&str]) -> std::process::Output {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_strongroom")).with_file_name("strongroom-softkey");
    let out = Command::new(bin).arg("--key").arg(key).args(args).output().unwrap();
    assert!(out.status.success(), "softkey {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `strongroom login` (device grant) under `home`, approved by the software key at `key`.
fn device_login(s: &Server, home: &std::path::Path, key: &std::path::Path, username: &str) {
    let mut login = strongroom()
        .env("XDG_CONFIG_HOME", home)
        .args(["--server", &s.base, "login"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(login.stdout.take().unwrap()));
    let url = loop {
        let line = lines.next().expect("login printed no device URL").unwrap();
        if let Some(at) = line.find("http") {
            if line.contains("/device?user_code=") {
                break line[at..].trim().to_string();
            }
        }
    };
    softkey(key, &["approve", &url, "--username", username]);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(login.wait().unwrap().success(), "{rest:?}");
}

#[test]
fn an_approved_restore_outlives_two_second_access_tokens() {
    let s = start_server_with(&["--access-token-seconds", "2"]);
    let owner_key = s.dir.path().join("owner.key");
    softkey(&owner_key, &["enroll", &s.first_link]);
    let owner_home = s.dir.path().join("owner-home");
    device_login(&s, &owner_home, &owner_key, "owner");
    let run = |args: &[&str]| {
        let out = client_as(&s, &owner_home, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    run(&["vault", "create", "prod", "--kind", "production"]);
    let out = strongroom()
        .args(["admin", "enroll-link", "--user", "alice", "--role", "reader"])
        .arg("--data-dir")
        .arg(s.dir.path().join("data"))
        .output()
        .unwrap();
    let alice_key = s.dir.path().join("alice.key");
    softkey(&alice_key, &["enroll", String::from_utf8(out.stdout).unwrap().trim()]);
    run(&["role", "assign", "--user", "alice", "--role", "restore-operator", "--vault", "prod"]);
    let src = s.dir.path().join("src");
    testkit::make_tree(&src);
    std::fs::write(src.join("big.bin"), testkit::random_bytes(77, 6 << 20)).unwrap();
    run(&["backup", "--vault", "prod", src.to_str().unwrap()]);

    // Every access token the CLI holds is dead by now; it refreshes while it waits.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let target = s.dir.path().join("restored");
    let mut cmd = strongroom();
    cmd.env("XDG_CONFIG_HOME", &owner_home).args(["--server", &s.base]);
    let (mut restore, mut stdout, url) =
        spawn_restore(cmd, &["--vault", "prod", "latest", "--json", "--limit-download", "1"], &target);
    std::thread::sleep(std::time::Duration::from_secs(3));
    softkey(&alice_key, &["approve", url.trim(), "--username", "alice"]);
    let approved = std::time::Instant::now();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = restore.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut restore.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let took = approved.elapsed();
    // At 1 MiB/s the 6 MiB restore runs for several token lifetimes, on its grant alone.
    assert!(took > std::time::Duration::from_secs(4), "the restore took only {took:?}");
    let summary: serde_json::Value = serde_json::from_str(&rest).unwrap();
    assert!(summary["bytes"].as_u64().unwrap() >= 6 << 20, "{summary}");
    testkit::assert_trees_equal(&src, &target.join("src"));
}

#[test]
fn the_master_key_can_come_from_the_environment_and_never_touches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = |key: Option<&str>| {
        let mut c = strongroom();
        c.env("STRONGROOM_MASTER_KEY_SOURCE", "env").env_remove("STRONGROOM_MASTER_KEY");
        if let Some(k) = key {
            c.env("STRONGROOM_MASTER_KEY", k);
        }
        c.args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--public-url",
            &format!("http://localhost:{port}"),
        ])
        .arg("--data-dir")
        .arg(&data);
        c
    };
    let mut child = server(Some(&"ab".repeat(32))).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut link = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut link).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(link.contains("/enroll/"), "{link}");
    assert!(!data.join("keys/master.key").exists() && data.join("keys/master.check").exists());
    let out = server(None).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("STRONGROOM_MASTER_KEY"));
    let out = server(Some(&"cd".repeat(32))).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a client command in the background; returns it, its stdout and the first line it
/// printed (a critical operation's approval URL).
fn spawn_client(
    s: &Server,
    token: &str,
    args: &[&str],
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>, String) {
    let mut cmd = strongroom();
    cmd.env("XDG_CONFIG_HOME", s.dir.path()).args(["--server", &s.base, "--token", token]).args(args);
    spawn_first_line(cmd)
}

/// Waits for a spawned client; returns (success, rest of stdout, stderr).
fn finish_client(
    mut child: std::process::Child,
    mut stdout: std::io::BufReader<std::process::ChildStdout>,
) -> (bool, String, String) {
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.success(), out, err)
}

/// A user enrolled through the host's `admin enroll-link`, with a software passkey.
fn host_enrolled(s: &Server, user: &str, role: &str) -> std::path::PathBuf {
    let out = strongroom()
        .args(["admin", "enroll-link", "--user", user, "--role", role])
        .arg("--data-dir")
        .arg(s.dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = s.dir.path().join(format!("{user}.key"));
    softkey(&key, &["enroll", String::from_utf8(out.stdout).unwrap().trim()]);
    key
}

#[test]
fn critical_commands_print_their_approval_url_wait_and_exit_0_only_if_the_operation_ran() {
    // Two Security Admin approvals per critical operation, besides the requester's own.
    let s = start_server_with(&["--critical-approvals", "2"]);
    let owner = enroll_and_token(&s, &s.first_link);
    let owner_key = key_path(&s, &s.first_link);
    let sa1 = host_enrolled(&s, "sa1", "security-admin");
    let sa2 = host_enrolled(&s, "sa2", "security-admin");
    let approve = |key: &std::path::Path, user: &str, url: &str| softkey(key, &["approve", url, "--username", user]);
    assert!(client(&s, &owner, &["vault", "create", "crit"]).status.success());
    let src = s.dir.path().join("src");
    testkit::make_tree(&src);
    let s1 = json_of(&client(&s, &owner, &["backup", "--vault", "crit", "--json", src.to_str().unwrap()]))
        ["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let state1 = s.dir.path().join("state1/src");
    testkit::copy_tree(&src, &state1);

    // Shorter retention: the URL alone on the first line; it waits for the requester's step-up
    // and both Security Admins, then exits 0.
    let (child, stdout, url) = spawn_client(&s, &owner, &["vault", "set-retention", "crit", "7"]);
    assert!(url.starts_with(&format!("{}/approvals/", s.base)), "{url}");
    let mut child = child;
    approve(&owner_key, "owner", &url);
    approve(&sa1, "sa1", &url);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(child.try_wait().unwrap().is_none(), "still waiting for the second Security Admin");
    approve(&sa2, "sa2", &url);
    let (ok, out, err) = finish_client(child, stdout);
    assert!(ok && out.contains("retention is now 7 days"), "{out}{err}");
    assert!(err.contains("waiting for"), "{err}");

    // Denied: exit 1, nothing changed.
    let (child, stdout, url) = spawn_client(&s, &owner, &["vault", "set-immutability", "crit", "enabled"]);
    approve(&owner_key, "owner", &url);
    let t1 = String::from_utf8(softkey(&sa1, &["login", "--server", &s.base, "--username", "sa1"]).stdout).unwrap();
    let id = url.rsplit('/').next().unwrap();
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/approvals/{id}/deny", s.base))
        .bearer_auth(t1.trim())
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let (ok, _, err) = finish_client(child, stdout);
    assert!(!ok && err.contains("denied"), "{err}");
    let shown = json_of(&client(&s, &owner, &["vault", "show", "crit", "--json"]));
    assert_eq!(
        (shown["policy"]["retention_days"].as_u64(), shown["policy"]["immutability"].as_str()),
        (Some(7), Some("disabled"))
    );

    // A protected snapshot: delete (critical), listed as deleted, undeleted.
    let (child, stdout, url) = spawn_client(&s, &owner, &["snapshot", "delete", "--vault", "crit", &s1[..8]]);
    for (k, u) in [(&owner_key, "owner"), (&sa1, "sa1"), (&sa2, "sa2")] {
        approve(k, u, &url);
    }
    let (ok, out, err) = finish_client(child, stdout);
    assert!(ok && out.contains("recoverable until"), "{out}{err}");
    let out = client(&s, &owner, &["snapshots", "--vault", "crit"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("Deleted") && text.contains(&s1[..8]), "{text}");
    assert!(client(&s, &owner, &["snapshot", "undelete", "--vault", "crit", &s1[..8]]).status.success());
    assert_eq!(json_of(&client(&s, &owner, &["snapshots", "--vault", "crit", "--json"])).as_array().unwrap().len(), 1);

    // Rotation end to end: back up, rotate, back up, retire version 1 (critical), check.
    let rotated = json_of(&client(&s, &owner, &["vault", "rotate-key", "crit", "--json"]));
    assert_eq!(rotated["new_version"], 2, "{rotated}");
    std::fs::write(src.join("after-rotation.txt"), vec![7u8; 300_000]).unwrap();
    let s2 = json_of(&client(&s, &owner, &["backup", "--vault", "crit", "--json", src.to_str().unwrap()]))
        ["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (child, stdout, url) = spawn_client(&s, &owner, &["vault", "rotate-key", "crit", "--retire", "1"]);
    for (k, u) in [(&owner_key, "owner"), (&sa1, "sa1"), (&sa2, "sa2")] {
        approve(k, u, &url);
    }
    let (ok, out, err) = finish_client(child, stdout);
    assert!(ok && out.contains("key version 1 retired"), "{out}{err}");
    assert!(client(&s, &owner, &["check", "--vault", "crit", "--read-data"]).status.success());
    let r = open_vault(&s, "crit");
    assert_eq!(r.kek_versions(), vec![2]);
    assert!(!s.dir.path().join("data/vaults/crit/keys/kek-1").exists());
    assert_snapshot_restores(&r, &s1, &state1, &s.dir.path().join("r1"));
    assert_snapshot_restores(&r, &s2, &src, &s.dir.path().join("r2"));

    // Vault delete (critical), listed as deleted, undeleted.
    let (child, stdout, url) = spawn_client(&s, &owner, &["vault", "delete", "crit"]);
    for (k, u) in [(&owner_key, "owner"), (&sa1, "sa1"), (&sa2, "sa2")] {
        approve(k, u, &url);
    }
    let (ok, out, err) = finish_client(child, stdout);
    assert!(ok && out.contains("vault undelete crit"), "{out}{err}");
    let text = String::from_utf8_lossy(&client(&s, &owner, &["vault", "list"]).stdout).to_string();
    assert!(text.contains("DELETED"), "{text}");
    let out = client(&s, &owner, &["backup", "--vault", "crit", src.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("undelete"));
    assert!(client(&s, &owner, &["vault", "undelete", "crit"]).status.success());

    // Locked: for good. What would weaken it is refused at once, without an approval URL.
    let (child, stdout, url) = spawn_client(&s, &owner, &["vault", "set-immutability", "crit", "locked"]);
    for (k, u) in [(&owner_key, "owner"), (&sa1, "sa1"), (&sa2, "sa2")] {
        approve(k, u, &url);
    }
    assert!(finish_client(child, stdout).0);
    for args in [
        &["vault", "set-retention", "crit", "1"][..],
        &["vault", "set-immutability", "crit", "disabled"],
        &["snapshot", "delete", "--vault", "crit", &s2[..8]],
        &["vault", "delete", "crit"],
    ] {
        let out = client(&s, &owner, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no approval URL for what nobody may do");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("policy.immutable") || err.contains("policy.locked"), "{args:?}: {err}");
    }
    let out = client(&s, &owner, &["vault", "set-retention", "crit", "30"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("30 days"));
}
