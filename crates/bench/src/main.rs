//! `strongroom-bench`: times the storage engine, and its peers (restic, borg, rustic) on the
//! same data in the same run, and writes the figures as JSON.

mod engine;
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
    /// The engine steps and the same steps with restic, borg (and rustic if installed), with ratios.
    Compare(peers::CompareArgs),
    /// Per-core speed of the building blocks (BLAKE3, zstd levels, AES-256-GCM, XChaCha20-Poly1305).
    Primitives {
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-results/primitives.json")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Engine(args) => {
            let result = engine::run(&args)?;
            sys::write_json(&args.out, &result)?;
            println!("wrote {}", args.out.display());
        }
        Cmd::Compare(args) => peers::compare(&args)?,
        Cmd::Primitives { out } => {
            let result = primitives::run();
            sys::write_json(&out, &result)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
