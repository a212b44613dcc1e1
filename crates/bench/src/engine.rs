//! The engine benchmark: full backup, change, incremental backup, restore, check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use repo::backup::{backup_local, Progress};
use repo::crypto::MasterKey;
use repo::restore::{restore, RestoreOptions, RestoreProgress};
use repo::{InitOptions, ObjectStoreBackend, Repository, SharedRng};
use serde::Serialize;

use crate::sys;

/// Arguments of `strongroom-bench engine`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct EngineArgs {
    /// Directory to back up.
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Repository directory (created; wiped if an earlier benchmark made it).
    #[arg(long)]
    pub(crate) repo: PathBuf,
    /// Where to restore (created; wiped if an earlier benchmark made it).
    #[arg(long)]
    pub(crate) restore_to: PathBuf,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/engine.json")]
    pub(crate) out: PathBuf,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub(crate) compression: i32,
    /// Average content-defined chunk size in KiB (min is half, max is 8×).
    #[arg(long, default_value_t = 1024)]
    pub(crate) avg_chunk_kib: u32,
    /// Fixed chunk size for disk images, KiB.
    #[arg(long, default_value_t = 4096)]
    pub(crate) fixed_chunk_kib: u32,
    /// Pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pub(crate) pack_mib: u32,
    /// The script that applies and reverts the 1 % change (default: ../shared/bench/change-dataset.sh).
    #[arg(long)]
    pub(crate) change_script: Option<PathBuf>,
    /// Skip the byte-for-byte comparison of the restored tree (it is not timed either way).
    #[arg(long)]
    pub(crate) no_verify: bool,
}

/// One timed step.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct Step {
    pub(crate) seconds: f64,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_rss_bytes: u64,
    pub(crate) mb_per_s: f64,
}

/// Everything measured.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct EngineResult {
    pub(crate) data: String,
    pub(crate) data_bytes: u64,
    pub(crate) files: u64,
    pub(crate) settings: serde_json::Value,
    pub(crate) backup1: Step,
    pub(crate) backup1_stored_bytes: u64,
    pub(crate) backup2: Step,
    pub(crate) backup2_files_read: u64,
    pub(crate) backup2_new_bytes: u64,
    pub(crate) restore: Step,
    pub(crate) restore_identical: Option<bool>,
    pub(crate) check: Step,
    pub(crate) check_read_data: Step,
    pub(crate) repo_bytes: u64,
    pub(crate) repo_bytes_after_change: u64,
}

fn timed<T>(bytes: u64, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Step)> {
    sys::reset_peak_rss();
    let cpu = sys::cpu_seconds();
    let start = Instant::now();
    let v = f()?;
    let seconds = start.elapsed().as_secs_f64();
    let step = Step {
        seconds,
        cpu_seconds: sys::cpu_seconds() - cpu,
        peak_rss_bytes: sys::peak_rss(),
        mb_per_s: bytes as f64 / seconds / 1e6,
    };
    Ok((v, step))
}

fn sync_fs() {
    let _ = std::process::Command::new("sync").status();
}

/// Applies or reverts the data set change.
pub(crate) fn change(data: &Path, script: Option<&Path>, action: &str) -> anyhow::Result<()> {
    let script = match script {
        Some(s) => s.to_path_buf(),
        None => sys::find_shared_script("BENCH_CHANGE_SCRIPT", "change-dataset.sh")
            .context("change-dataset.sh not found: pass --change-script or set BENCH_CHANGE_SCRIPT")?,
    };
    let st = std::process::Command::new("bash")
        .arg(&script)
        .arg(action)
        .arg(data)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        bail!("{} {action} failed", script.display());
    }
    Ok(())
}

/// Runs every step once.
pub(crate) fn run(a: &EngineArgs) -> anyhow::Result<EngineResult> {
    let data = std::path::absolute(&a.data)?;
    if !data.is_dir() {
        bail!("{} is not a directory (make the data set with ../shared/bench/make-dataset.sh)", data.display());
    }
    sys::fresh_dir(&a.repo)?;
    sys::fresh_dir(&a.restore_to)?;
    let has_image = data.join("vm-disk.raw").exists();
    let opts = InitOptions {
        chunker: repo::chunker::ChunkerParams {
            min: a.avg_chunk_kib * 512,
            avg: a.avg_chunk_kib * 1024,
            max: a.avg_chunk_kib * 8192,
            fixed: a.fixed_chunk_kib * 1024,
        },
        pack_size: a.pack_mib << 20,
        compression_level: a.compression,
    };
    let settings = serde_json::json!({
        "compression_level": a.compression, "chunker": opts.chunker, "pack_size": opts.pack_size,
        "threads": rayon::current_num_threads(),
    });
    let store_dir = a.repo.join("repo");
    let rng = SharedRng::os();
    let master = MasterKey::load_or_create(&a.repo.join("master.key"), &mut rng.clone())?;
    let backend = Arc::new(ObjectStoreBackend::local(&store_dir)?);
    let repo = Repository::init(backend, &master, opts, time::OffsetDateTime::now_utc(), rng)?;
    let data_bytes = sys_apparent(&data);

    println!("engine: data {} ({:.2} GB)", data.display(), data_bytes as f64 / 1e9);
    let progress = Progress::default();
    let start = Instant::now();
    let finished = std::sync::atomic::AtomicBool::new(false);
    let ((id1, snap1, _), backup1) = std::thread::scope(|s| {
        s.spawn(|| {
            use std::sync::atomic::Ordering::Relaxed;
            while !progress.walk_done.load(Relaxed) && !finished.load(Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            println!("  (walk finished after {:.2} s)", start.elapsed().as_secs_f64());
        });
        let r = timed(data_bytes, || {
            Ok(backup_local(
                &repo,
                std::slice::from_ref(&data),
                None,
                "bench",
                time::OffsetDateTime::now_utc(),
                &progress,
            )?)
        });
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })?;
    sync_fs();
    let repo_bytes = sys::du(&store_dir);
    println!(
        "  full backup    {:7.2} s  {:6.0} MB/s  cpu {:6.2} s  rss {:5} MB  stored {:.0} MB",
        backup1.seconds,
        backup1.mb_per_s,
        backup1.cpu_seconds,
        backup1.peak_rss_bytes >> 20,
        repo_bytes as f64 / 1e6
    );

    if has_image || a.change_script.is_some() {
        change(&data, a.change_script.as_deref(), "apply")?;
    } else {
        builtin_change(&data)?;
    }
    let outcome = (|| -> anyhow::Result<EngineResult> {
        let progress = Progress::default();
        let ((_, snap2, _), backup2) = timed(data_bytes, || {
            Ok(backup_local(
                &repo,
                std::slice::from_ref(&data),
                Some(id1),
                "bench",
                time::OffsetDateTime::now_utc(),
                &progress,
            )?)
        })?;
        sync_fs();
        let repo_bytes_after_change = sys::du(&store_dir);
        println!(
            "  incremental    {:7.2} s  {:6.0} MB/s  cpu {:6.2} s  rss {:5} MB  read {} files, {:.1} MB new",
            backup2.seconds,
            backup2.mb_per_s,
            backup2.cpu_seconds,
            backup2.peak_rss_bytes >> 20,
            snap2.summary.files_read,
            snap2.summary.new_bytes as f64 / 1e6
        );
        let rp = RestoreProgress::default();
        let (_, restore_step) = timed(data_bytes, || {
            let r = restore(&repo, &snap2, &a.restore_to, &RestoreOptions::default(), &rp)?;
            // Restores are bounded by the kernel's write path: include writing back to disk.
            sync_fs();
            Ok(r)
        })?;
        println!(
            "  restore        {:7.2} s  {:6.0} MB/s  cpu {:6.2} s  rss {:5} MB",
            restore_step.seconds,
            restore_step.mb_per_s,
            restore_step.cpu_seconds,
            restore_step.peak_rss_bytes >> 20
        );
        let restored = a.restore_to.join(data.file_name().unwrap_or_default());
        let identical = if a.no_verify { None } else { Some(same_tree(&data, &restored)) };
        if identical == Some(false) {
            println!("  RESTORE DIFFERS from the data");
        }
        let (r, check) = timed(0, || Ok(repo::check::check(&repo, false)?))?;
        if !r.ok() {
            bail!("check found errors: {:?}", r.errors);
        }
        let (r, check_read_data) = timed(repo_bytes_after_change, || Ok(repo::check::check(&repo, true)?))?;
        if !r.ok() {
            bail!("check --read-data found errors: {:?}", r.errors);
        }
        println!(
            "  check {:.2} s, check --read-data {:.2} s ({} blobs)",
            check.seconds, check_read_data.seconds, r.blobs_verified
        );
        Ok(EngineResult {
            data: data.display().to_string(),
            data_bytes,
            files: snap1.summary.files,
            settings: settings.clone(),
            backup1: backup1.clone(),
            backup1_stored_bytes: repo_bytes,
            backup2,
            backup2_files_read: snap2.summary.files_read,
            backup2_new_bytes: snap2.summary.new_bytes,
            restore: restore_step,
            restore_identical: identical,
            check,
            check_read_data,
            repo_bytes: sys::du(&store_dir),
            repo_bytes_after_change,
        })
    })();
    if has_image || a.change_script.is_some() {
        change(&data, a.change_script.as_deref(), "revert")?;
    } else {
        builtin_revert(&data)?;
    }
    let _ = std::fs::remove_dir_all(&a.restore_to);
    outcome
}

fn sys_apparent(dir: &Path) -> u64 {
    sys::du(dir)
}

const BUILTIN_SUFFIX: &[u8] = b"\nchanged for benchmark\n";

/// For a directory without the data set's disk image: append a line to every 100th file.
fn builtin_change(data: &Path) -> anyhow::Result<()> {
    for f in every_100th(data) {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&f)?.write_all(BUILTIN_SUFFIX)?;
    }
    Ok(())
}

fn builtin_revert(data: &Path) -> anyhow::Result<()> {
    for f in every_100th(data) {
        let len = std::fs::metadata(&f)?.len();
        std::fs::OpenOptions::new().write(true).open(&f)?.set_len(len.saturating_sub(BUILTIN_SUFFIX.len() as u64))?;
    }
    Ok(())
}

fn every_100th(data: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => files.push(e.path()),
                _ => {}
            }
        }
    }
    files.sort();
    files.into_iter().skip(99).step_by(100).collect()
}

/// True if the two trees have the same names, types, contents and symlink targets.
pub(crate) fn same_tree(a: &Path, b: &Path) -> bool {
    let out = std::process::Command::new("diff").arg("-rq").arg("--no-dereference").arg(a).arg(b).output();
    match out {
        Ok(o) => {
            if !o.status.success() {
                let text = String::from_utf8_lossy(&o.stdout);
                for line in text.lines().take(5) {
                    println!("  diff: {line}");
                }
            }
            o.status.success()
        }
        Err(_) => false,
    }
}
