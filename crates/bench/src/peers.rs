//! `compare`: the engine and its peers on the same data, in the same run, with ratios.
//!
//! Peers run through ../shared/bench/peers.sh (the same script that judges speed), so they get
//! exactly the steps and data change the engine gets. Runs are interleaved (engine, restic,
//! borg, engine, …) because restore times swing 2–3× run to run with the kernel's write-back.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::engine::{self, EngineArgs, EngineResult};
use crate::sys;

/// Arguments of `strongroom-bench compare`.
#[derive(clap::Args, Debug)]
pub(crate) struct CompareArgs {
    /// The data set (from ../shared/bench/make-dataset.sh).
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/compare.json")]
    pub(crate) out: PathBuf,
    /// Scratch directory for repositories and restores (wiped).
    #[arg(long, default_value = "/tmp/strongroom-bench/work")]
    pub(crate) work: PathBuf,
    /// Interleaved rounds; the median of each figure is reported.
    #[arg(long, default_value_t = 1)]
    pub(crate) runs: u32,
    /// Peers to run (those not installed are skipped with a note).
    #[arg(long, value_delimiter = ',', default_value = "restic,borg,rustic")]
    pub(crate) peers: Vec<String>,
    /// zstd level for the engine.
    #[arg(long, default_value_t = 3)]
    pub(crate) compression: i32,
}

/// One peer's figures for one round of ../shared/bench/peers.sh.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct PeerRun {
    pub(crate) tool: String,
    pub(crate) run: u32,
    pub(crate) backup1_s: f64,
    pub(crate) backup2_s: f64,
    pub(crate) restore_s: f64,
    pub(crate) repo_bytes: u64,
    pub(crate) restore_identical: bool,
    pub(crate) backup1_peak_rss_bytes: u64,
}

#[derive(Serialize, Debug)]
struct Ratio {
    peer: String,
    /// Peer time / engine time: above 1 means the engine is faster.
    backup1_speedup: f64,
    backup2_speedup: f64,
    restore_speedup: f64,
    /// Engine repository size / peer's: at most 1 means the engine stores no more.
    repo_size_ratio: f64,
}

#[derive(Serialize, Debug)]
struct CompareResult {
    machine: String,
    data_bytes: u64,
    engine_runs: Vec<EngineResult>,
    peer_runs: Vec<PeerRun>,
    medians: Vec<PeerRun>,
    ratios: Vec<Ratio>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

pub(crate) fn installed(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs one round of `tool` through peers.sh on `data`, with scratch space under `work`.
pub(crate) fn run_peer(
    script: &std::path::Path,
    tool: &str,
    run: u32,
    data: &std::path::Path,
    work: &std::path::Path,
) -> anyhow::Result<PeerRun> {
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(tool)
        .arg(run.to_string())
        .env("BENCH_DATA", data)
        .env("BENCH_WORK", work)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{tool} run")))
        .with_context(|| format!("{tool}: no result line in {text:?}"))?;
    println!("  {line}");
    let field = |key: &str| -> Option<&str> {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1).copied())
    };
    let secs = |key: &str| field(key).and_then(|v| v.trim_end_matches('s').parse::<f64>().ok()).unwrap_or(f64::NAN);
    let repo_bytes = field("repo").and_then(|v| v.trim_end_matches('B').parse().ok()).unwrap_or(0);
    let rss_kb = std::fs::read_to_string(work.join(format!("logs/{tool}-{run}/backup1.time")))
        .ok()
        .and_then(|s| s.split_whitespace().nth(3).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    Ok(PeerRun {
        tool: tool.into(),
        run,
        backup1_s: secs("backup1"),
        backup2_s: secs("backup2"),
        restore_s: secs("restore"),
        repo_bytes,
        restore_identical: line.contains("restore=identical"),
        backup1_peak_rss_bytes: rss_kb * 1024,
    })
}

/// Runs the comparison and writes the results.
pub(crate) fn compare(a: &CompareArgs) -> anyhow::Result<()> {
    let script = sys::find_shared_script("BENCH_PEERS_SCRIPT", "peers.sh")
        .context("peers.sh not found: set BENCH_PEERS_SCRIPT")?;
    if !a.data.join("vm-disk.raw").exists() {
        bail!("{} is not the benchmark data set (run ../shared/bench/make-dataset.sh)", a.data.display());
    }
    let peers: Vec<String> = a
        .peers
        .iter()
        .filter(|p| {
            let ok = installed(p);
            if !ok {
                println!("{p} is not installed: skipped");
            }
            ok
        })
        .cloned()
        .collect();
    let mut engine_runs = Vec::new();
    let mut peer_runs = Vec::new();
    for run in 1..=a.runs {
        println!("round {run} of {}", a.runs);
        let args = EngineArgs {
            data: a.data.clone(),
            repo: a.work.join(format!("repo-strongroom-{run}")),
            restore_to: a.work.join(format!("restore-strongroom-{run}")),
            out: a.out.clone(),
            compression: a.compression,
            avg_chunk_kib: 1024,
            fixed_chunk_kib: 4096,
            pack_mib: 16,
            change_script: None,
            no_verify: false,
        };
        let r = engine::run(&args)?;
        let _ = std::fs::remove_dir_all(&args.repo);
        engine_runs.push(r);
        for p in &peers {
            peer_runs.push(run_peer(&script, p, run, &a.data, &a.work)?);
        }
    }
    let e = PeerRun {
        tool: "strongroom".into(),
        run: 0,
        backup1_s: median(engine_runs.iter().map(|r| r.backup1.seconds).collect()),
        backup2_s: median(engine_runs.iter().map(|r| r.backup2.seconds).collect()),
        restore_s: median(engine_runs.iter().map(|r| r.restore.seconds).collect()),
        repo_bytes: median(engine_runs.iter().map(|r| r.repo_bytes as f64).collect()) as u64,
        restore_identical: engine_runs.iter().all(|r| r.restore_identical != Some(false)),
        backup1_peak_rss_bytes: median(engine_runs.iter().map(|r| r.backup1.peak_rss_bytes as f64).collect()) as u64,
    };
    let mut medians = vec![e.clone()];
    let mut ratios = Vec::new();
    for p in &peers {
        let m = median_of(p, &peer_runs);
        ratios.push(Ratio {
            peer: p.clone(),
            backup1_speedup: m.backup1_s / e.backup1_s,
            backup2_speedup: m.backup2_s / e.backup2_s,
            restore_speedup: m.restore_s / e.restore_s,
            repo_size_ratio: e.repo_bytes as f64 / m.repo_bytes as f64,
        });
        medians.push(m);
    }
    println!("\n| tool | full backup s | incremental s | restore s | repository MB | backup peak RSS MB | restore identical |");
    println!("|---|---|---|---|---|---|---|");
    for m in &medians {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |",
            m.tool,
            m.backup1_s,
            m.backup2_s,
            m.restore_s,
            m.repo_bytes as f64 / 1e6,
            m.backup1_peak_rss_bytes >> 20,
            m.restore_identical
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
    let machine = machine();
    let data_bytes = engine_runs.first().map(|r| r.data_bytes).unwrap_or(0);
    sys::write_json(&a.out, &CompareResult { machine, data_bytes, engine_runs, peer_runs, medians, ratios })?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// The median of each figure over `tool`'s rounds.
pub(crate) fn median_of(tool: &str, all: &[PeerRun]) -> PeerRun {
    let runs: Vec<&PeerRun> = all.iter().filter(|r| r.tool == tool).collect();
    PeerRun {
        tool: tool.to_string(),
        run: 0,
        backup1_s: median(runs.iter().map(|r| r.backup1_s).collect()),
        backup2_s: median(runs.iter().map(|r| r.backup2_s).collect()),
        restore_s: median(runs.iter().map(|r| r.restore_s).collect()),
        repo_bytes: median(runs.iter().map(|r| r.repo_bytes as f64).collect()) as u64,
        restore_identical: runs.iter().all(|r| r.restore_identical),
        backup1_peak_rss_bytes: median(runs.iter().map(|r| r.backup1_peak_rss_bytes as f64).collect()) as u64,
    }
}

/// Cores and CPU model, for the results file.
pub(crate) fn machine() -> String {
    format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()))
            .unwrap_or_default()
    )
}
