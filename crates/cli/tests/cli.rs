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
    for word in ["server", "login", "whoami", "vault", "role", "policy", "admin", "Exit codes"] {
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
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = strongroom()
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--public-url", &format!("http://localhost:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.trim().starts_with(&format!("http://localhost:{port}/enroll/")), "{line}");
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
