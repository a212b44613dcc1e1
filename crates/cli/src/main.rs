//! The `strongroom` command: for now only help and version; server and client commands follow.

use clap::Parser;

/// Strongroom: a self-hosted backup vault where nobody restores, deletes or weakens a backup
/// without a fresh passkey assertion bound to that exact operation.
#[derive(Parser, Debug)]
#[command(name = "strongroom", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    println!("strongroom {}: the storage engine is in place; server commands arrive next.", env!("CARGO_PKG_VERSION"));
    println!("Run `strongroom --help` for usage, or `strongroom-bench --help` to benchmark the engine.");
    Ok(())
}
