//! The `strongroom-softkey` binary as automation runs it (this test also makes cargo build it
//! for the CLI's end-to-end tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn softkey() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strongroom-softkey"))
}

#[test]
fn help_names_the_three_commands() {
    let out = softkey().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["enroll", "login", "approve"] {
        assert!(text.contains(cmd), "{text}");
    }
}

#[test]
fn bad_urls_are_refused_clearly_and_leave_no_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.json");
    let out = softkey().arg("--key").arg(&key).args(["enroll", "http://localhost:1/not-a-link"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an enrollment URL"));
    let out = softkey().arg("--key").arg(&key).args(["approve", "http://localhost:1/elsewhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!key.exists(), "a failed command does not create a key file");
}
