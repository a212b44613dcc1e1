//! `strongroom-bench`: times the storage engine, and its peers (restic, borg, rustic) on the
//! same data in the same run, and writes the figures as JSON.

mod audit_bench;
mod e2e;
mod engine;
mod identity_bench;
mod peers;
mod primitives;
mod sys;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Benchmarks for Strongroom's storage engine. Results go to a JSON file (and a summary to stdout).
///
/// Typical use, on the data set from ../shared/bench/make-dataset.sh:
///   strongroom-bench compare --data /tmp/strongroom-bench/data --out bench-results/compare.json
#[derive(Parser, Debug)]
#[command(name = "strongroom-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Full backup, 1 % change, incremental backup, restore, check; times, sizes, peak memory.
    Engine(engine::EngineArgs),
    /// The engine steps on a scratch copy of a small directory (default /usr/share/doc): a first look.
    Demo {
        /// Directory to copy and back up.
        #[arg(long, default_value = "/usr/share/doc")]
        from: PathBuf,
        /// Scratch directory (wiped if an earlier benchmark made it).
        #[arg(long, default_value = "/tmp/strongroom-demo")]
        work: PathBuf,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-results/demo.json")]
        out: PathBuf,
    },
    /// The engine steps and the same steps with restic, borg (and rustic if installed), with ratios.
    Compare(peers::CompareArgs),
    /// The whole product over loopback HTTP (server + CLI, approved restore) against restic.
    ///
    /// Needs the release binaries next to this one:
    ///   cargo build --release -p cli -p testkit -p bench
    ///   target/release/strongroom-bench e2e --data /tmp/strongroom-bench/data --out bench-results/e2e.json
    E2e(e2e::E2eArgs),
    /// Durable audit appends per second and offline verification speed of an export.
    Audit {
        /// Appends to time.
        #[arg(long, default_value_t = 100_000)]
        appends: u64,
        /// Concurrent appenders (the server's request handlers).
        #[arg(long, default_value_t = 64)]
        appenders: usize,
        /// Records in the export to verify.
        #[arg(long, default_value_t = 1_000_000)]
        verify_records: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-results/audit.json")]
        out: PathBuf,
    },
    /// Passkey assertions and access tokens verified per second, on one core.
    Identity {
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-results/identity.json")]
        out: PathBuf,
    },
    /// Per-core speed of the building blocks (BLAKE3, zstd levels, AES-256-GCM, XChaCha20-Poly1305).
    Primitives {
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-results/primitives.json")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::E2e(args) => e2e::run(&args)?,
        Cmd::Audit { appends, appenders, verify_records, out } => {
            audit_bench::run(appends, appenders, verify_records, &out)?
        }
        Cmd::Engine(args) => {
            let result = engine::run(&args)?;
            sys::write_json(&args.out, &result)?;
            println!("wrote {}", args.out.display());
        }
        Cmd::Demo { from, work, out } => {
            sys::fresh_dir(&work)?;
            let data = work.join("data");
            let st = std::process::Command::new("cp").arg("-a").arg(&from).arg(&data).status()?;
            anyhow::ensure!(st.success(), "copying {} failed", from.display());
            let args = engine::EngineArgs {
                data,
                repo: work.join("repo"),
                restore_to: work.join("restore"),
                out: out.clone(),
                compression: 3,
                avg_chunk_kib: 1024,
                fixed_chunk_kib: 4096,
                pack_mib: 16,
                change_script: None,
                no_verify: false,
            };
            let result = engine::run(&args)?;
            anyhow::ensure!(result.restore_identical == Some(true), "the restored tree differs from the data");
            sys::write_json(&out, &result)?;
            println!("restored tree is byte-identical; wrote {}", out.display());
        }
        Cmd::Compare(args) => peers::compare(&args)?,
        Cmd::Identity { out } => {
            let result = identity_bench::run()?;
            sys::write_json(&out, &result)?;
            println!("wrote {}", out.display());
        }
        Cmd::Primitives { out } => {
            let result = primitives::run();
            sys::write_json(&out, &result)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
