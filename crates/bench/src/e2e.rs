//! `e2e`: the whole product on loopback — `strongroom server` and the `strongroom` CLI as a user
//! runs them — against restic on the same data in the same run: full backup, 1 % change,
//! incremental backup, approved restore, byte-for-byte check.
//!
//! The restore figure is the CLI's own restore time after the approval (the passkey touch is a
//! person's step, not throughput); the wall time including the automated approval is reported
//! next to it.
//!
//! Every tool gets the same file system state: each tool's round runs on a freshly made ext4
//! file system (a loop-mounted sparse image, when run as root). Without that, results depend
//! on order: on an ext4 without a journal (this machine's /tmp) the inode allocator skips, one
//! inode-table lookup at a time, every inode deleted in the last 60 s (360 s while its block is
//! dirty), so a restore that follows another tool's cleanup runs two to three times slower.
//! Without root, scratch space is the work directory and our restores wait 61 s after the
//! last deletion, which is less fair; the results file records which was used.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::{engine, sys};

/// Arguments of `strongroom-bench e2e`.
#[derive(clap::Args, Debug)]
pub(crate) struct E2eArgs {
    /// The data set (from ../shared/bench/make-dataset.sh).
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/e2e.json")]
    pub(crate) out: PathBuf,
    /// Scratch directory for the server's data, restores and peers' repositories (wiped).
    #[arg(long, default_value = "/tmp/strongroom-bench/work")]
    pub(crate) work: PathBuf,
    /// Interleaved rounds (strongroom, restic, strongroom, …); medians are reported.
    #[arg(long, default_value_t = 1)]
    pub(crate) runs: u32,
    /// Peers to run through ../shared/bench/peers.sh (skipped if not installed).
    #[arg(long, value_delimiter = ',', default_value = "restic")]
    pub(crate) peers: Vec<String>,
    /// Scratch file system per tool and round: `ext4` (fresh loop-mounted image, needs root)
    /// or `none` (the work directory).
    #[arg(long, default_value = "ext4")]
    pub(crate) scratch_fs: String,
    /// Directory holding the `strongroom` and `strongroom-softkey` binaries [default: next to
    /// this one; build them with `cargo build --release -p cli -p testkit -p bench`].
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
struct E2eRun {
    run: u32,
    backup1_s: f64,
    backup2_s: f64,
    /// The CLI's restore time after the approval.
    restore_s: f64,
    /// Request, automated approval and restore, end to end.
    restore_wall_s: f64,
    backup1_uploaded_bytes: u64,
    backup2_uploaded_bytes: u64,
    vault_bytes: u64,
    restore_identical: bool,
}

#[derive(Serialize, Debug)]
struct Ratio {
    peer: String,
    /// Peer time / Strongroom time: above 1 means Strongroom is faster.
    backup1_speedup: f64,
    backup2_speedup: f64,
    restore_speedup: f64,
    /// Strongroom's vault size / the peer's repository size.
    repo_size_ratio: f64,
}

#[derive(Serialize, Debug)]
struct E2eResult {
    machine: String,
    scratch_fs: String,
    data: String,
    data_bytes: u64,
    strongroom_runs: Vec<E2eRun>,
    peer_runs: Vec<crate::peers::PeerRun>,
    strongroom: E2eRun,
    peers: Vec<crate::peers::PeerRun>,
    ratios: Vec<Ratio>,
}

/// A `strongroom server` on a loopback port, killed on drop.
struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bins {
    strongroom: PathBuf,
    softkey: PathBuf,
}

fn bins(a: &E2eArgs) -> anyhow::Result<Bins> {
    let dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("no directory of this executable")?.to_path_buf(),
    };
    let b = Bins { strongroom: dir.join("strongroom"), softkey: dir.join("strongroom-softkey") };
    for p in [&b.strongroom, &b.softkey] {
        if !p.is_file() {
            bail!(
                "{} is missing: build the binaries first (cargo build --release -p cli -p testkit -p bench) or pass --bin-dir",
                p.display()
            );
        }
    }
    Ok(b)
}

fn start_server(b: &Bins, dir: &Path) -> anyhow::Result<(Server, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://localhost:{port}");
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut child = Command::new(&b.strongroom)
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--public-url", &base])
        .arg("--data-dir")
        .arg(dir.join("server"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting strongroom server")?;
    let mut link = String::new();
    std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut link)?;
    let server = Server { child, base };
    if !link.contains("/enroll/") {
        bail!("the server printed no enrollment link (see {})", dir.join("server.log").display());
    }
    Ok((server, link.trim().to_string()))
}

fn run_ok(c: &mut Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// Waits until no large deletion happened in the last 61 seconds (see the module note).
fn settle(last_delete: Instant) {
    let quiet = std::time::Duration::from_secs(61);
    if let Some(wait) = quiet.checked_sub(last_delete.elapsed()) {
        println!("  (waiting {:.0} s: ext4 skips recently deleted inodes, slowing restores)", wait.as_secs_f64());
        std::thread::sleep(wait);
    }
}

/// A fresh ext4 file system on a sparse image, mounted under the work directory; unmounted
/// and deleted on drop (one host inode, so the host's allocator is not disturbed).
struct Scratch {
    image: PathBuf,
    mount: PathBuf,
}

impl Scratch {
    fn new(work: &Path, name: &str) -> anyhow::Result<Scratch> {
        let image = work.join(format!("{name}.img"));
        let mount = work.join(name);
        let _ = Command::new("umount").arg(&mount).stderr(Stdio::null()).status();
        let _ = std::fs::remove_file(&image);
        std::fs::File::create(&image)?.set_len(16 << 30)?;
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image), "mkfs.ext4")?;
        std::fs::create_dir_all(&mount)?;
        run_ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount), "mount -o loop")?;
        Ok(Scratch { image, mount })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

fn one_round(a: &E2eArgs, b: &Bins, data: &Path, run: u32, last_delete: Instant) -> anyhow::Result<E2eRun> {
    let scratch =
        if a.scratch_fs == "ext4" { Some(Scratch::new(&a.work, &format!("fs-strongroom-{run}"))?) } else { None };
    let dir = match &scratch {
        Some(s) => s.mount.join("e2e"),
        None => a.work.join(format!("e2e-strongroom-{run}")),
    };
    sys::fresh_dir(&dir)?;
    let (server, link) = start_server(b, &dir)?;
    let key = dir.join("owner.key");
    let softkey = |args: &[&str]| -> anyhow::Result<String> {
        let out = run_ok(Command::new(&b.softkey).arg("--key").arg(&key).args(args), "strongroom-softkey")?;
        Ok(String::from_utf8(out)?.trim().to_string())
    };
    softkey(&["enroll", &link])?;
    let token = softkey(&["login", "--server", &server.base])?;
    let cli = || {
        let mut c = Command::new(&b.strongroom);
        c.env("XDG_CONFIG_HOME", &dir).args(["--server", &server.base, "--token", &token]);
        c
    };
    run_ok(cli().args(["vault", "create", "bench", "--kind", "test"]), "vault create")?;
    let backup = |label: &str| -> anyhow::Result<(f64, u64)> {
        sync();
        let t = Instant::now();
        let out = run_ok(cli().args(["backup", "--vault", "bench", "--json"]).arg(data), label)?;
        let secs = t.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        let up = v["uploaded_bytes"].as_u64().unwrap_or(0);
        println!("  strongroom {label:<12} {secs:7.2} s  uploaded {:.0} MB", up as f64 / 1e6);
        Ok((secs, up))
    };
    let (backup1_s, backup1_uploaded_bytes) = backup("full backup")?;
    engine::change(data, None, "apply")?;
    let outcome = (|| -> anyhow::Result<E2eRun> {
        let (backup2_s, backup2_uploaded_bytes) = backup("incremental")?;
        sync();
        if scratch.is_none() {
            settle(last_delete);
        }
        let target = dir.join("restore");
        let t = Instant::now();
        let mut restore = cli()
            .args(["restore", "--vault", "bench", "latest", "--json", "--target"])
            .arg(&target)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdout = std::io::BufReader::new(restore.stdout.take().context("no stdout")?);
        let mut url = String::new();
        stdout.read_line(&mut url)?;
        softkey(&["approve", url.trim()])?;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest)?;
        let status = restore.wait()?;
        let restore_wall_s = t.elapsed().as_secs_f64();
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = restore.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            bail!("restore failed: {err}");
        }
        let v: serde_json::Value = serde_json::from_str(&rest).context("restore summary")?;
        let restore_s = v["seconds"].as_f64().unwrap_or(restore_wall_s);
        println!("  strongroom restore      {restore_s:7.2} s  ({restore_wall_s:.2} s with the approval)");
        sync();
        let restored = target.join(data.file_name().context("data has no name")?);
        let identical = Command::new("diff")
            .args(["-rq", "--no-dereference"])
            .arg(data)
            .arg(&restored)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        let vault_bytes = sys::du(&dir.join("server/vaults/bench"));
        Ok(E2eRun {
            run,
            backup1_s,
            backup2_s,
            restore_s,
            restore_wall_s,
            backup1_uploaded_bytes,
            backup2_uploaded_bytes,
            vault_bytes,
            restore_identical: identical,
        })
    })();
    engine::change(data, None, "revert")?;
    drop(server);
    drop(scratch);
    outcome
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the end-to-end comparison and writes the results.
pub(crate) fn run(a: &E2eArgs) -> anyhow::Result<()> {
    let b = bins(a)?;
    match a.scratch_fs.as_str() {
        "ext4" if rustix::process::geteuid().is_root() => {}
        "ext4" => {
            bail!("--scratch-fs ext4 mounts a fresh file system per round and needs root; pass --scratch-fs none")
        }
        "none" => println!("note: scratch on the work directory; restores after deletions are order-sensitive"),
        other => bail!("--scratch-fs is ext4 or none, not {other}"),
    }
    let data = std::path::absolute(&a.data)?;
    if !data.join("vm-disk.raw").exists() {
        bail!("{} is not the benchmark data set (run ../shared/bench/make-dataset.sh)", data.display());
    }
    let script = sys::find_shared_script("BENCH_PEERS_SCRIPT", "peers.sh")
        .context("peers.sh not found: set BENCH_PEERS_SCRIPT")?;
    let peers: Vec<String> = a
        .peers
        .iter()
        .filter(|p| {
            let ok = crate::peers::installed(p);
            if !ok {
                println!("{p} is not installed: skipped");
            }
            ok
        })
        .cloned()
        .collect();
    std::fs::create_dir_all(&a.work)?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut last_delete = Instant::now();
    for run in 1..=a.runs {
        println!("round {run} of {}", a.runs);
        ours.push(one_round(a, &b, &data, run, last_delete)?);
        for p in &peers {
            let scratch =
                if a.scratch_fs == "ext4" { Some(Scratch::new(&a.work, &format!("fs-{p}-{run}"))?) } else { None };
            let work = scratch.as_ref().map(|s| s.mount.clone()).unwrap_or_else(|| a.work.clone());
            theirs.push(crate::peers::run_peer(&script, p, run, &data, &work)?);
            // peers.sh deletes its restore as it ends.
            last_delete = Instant::now();
        }
    }
    for run in 1..=a.runs {
        let _ = std::fs::remove_dir_all(a.work.join(format!("e2e-strongroom-{run}")));
    }
    let m = E2eRun {
        run: 0,
        backup1_s: median(ours.iter().map(|r| r.backup1_s).collect()),
        backup2_s: median(ours.iter().map(|r| r.backup2_s).collect()),
        restore_s: median(ours.iter().map(|r| r.restore_s).collect()),
        restore_wall_s: median(ours.iter().map(|r| r.restore_wall_s).collect()),
        backup1_uploaded_bytes: median(ours.iter().map(|r| r.backup1_uploaded_bytes as f64).collect()) as u64,
        backup2_uploaded_bytes: median(ours.iter().map(|r| r.backup2_uploaded_bytes as f64).collect()) as u64,
        vault_bytes: median(ours.iter().map(|r| r.vault_bytes as f64).collect()) as u64,
        restore_identical: ours.iter().all(|r| r.restore_identical),
    };
    let mut peer_medians = Vec::new();
    let mut ratios = Vec::new();
    for p in &peers {
        let pm = crate::peers::median_of(p, &theirs);
        ratios.push(Ratio {
            peer: p.clone(),
            backup1_speedup: pm.backup1_s / m.backup1_s,
            backup2_speedup: pm.backup2_s / m.backup2_s,
            restore_speedup: pm.restore_s / m.restore_s,
            repo_size_ratio: m.vault_bytes as f64 / pm.repo_bytes as f64,
        });
        peer_medians.push(pm);
    }
    let data_bytes = sys::du(&data);
    println!("\n| tool | full backup s | incremental s | restore s | repository MB | restore identical |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| strongroom (server + CLI over HTTP) | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
        m.backup1_s,
        m.backup2_s,
        m.restore_s,
        m.vault_bytes as f64 / 1e6,
        m.restore_identical
    );
    for pm in &peer_medians {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
            pm.tool,
            pm.backup1_s,
            pm.backup2_s,
            pm.restore_s,
            pm.repo_bytes as f64 / 1e6,
            pm.restore_identical
        );
    }
    println!("\n| vs | full backup speed-up | incremental speed-up | restore speed-up | repository size ratio |");
    println!("|---|---|---|---|---|");
    for r in &ratios {
        println!(
            "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2} |",
            r.peer, r.backup1_speedup, r.backup2_speedup, r.restore_speedup, r.repo_size_ratio
        );
    }
    let result = E2eResult {
        machine: crate::peers::machine(),
        scratch_fs: a.scratch_fs.clone(),
        data: data.display().to_string(),
        data_bytes,
        strongroom_runs: ours,
        peer_runs: theirs,
        strongroom: m,
        peers: peer_medians,
        ratios,
    };
    sys::write_json(&a.out, &result)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
