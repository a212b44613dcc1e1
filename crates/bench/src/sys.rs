//! Process measurements (peak RSS, CPU time) and small file helpers for the benchmarks.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Resets the kernel's peak-RSS counter for this process (Linux `clear_refs` 5).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, in bytes.
pub(crate) fn peak_rss() -> u64 {
    status_kb("VmHWM:") * 1024
}

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// User + system CPU seconds used by this process so far.
pub(crate) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Total size of the files under `dir`.
pub(crate) fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Writes pretty JSON, creating the parent directory.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", path.display()))
}

/// Finds a script of ../shared/bench: `$var`, then relative to the working directory and
/// to the executable.
pub(crate) fn find_shared_script(var: &str, name: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(var) {
        return Some(PathBuf::from(p));
    }
    let mut bases = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        bases.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    bases
        .into_iter()
        .flat_map(|b| [b.join("../shared/bench").join(name), b.join("shared/bench").join(name)])
        .find(|p| p.is_file())
}

/// Prepares an output directory the benchmark may wipe: absent, empty, or made by an earlier
/// benchmark (it holds the marker file). Anything else is refused.
pub(crate) fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    const MARKER: &str = ".strongroom-bench";
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            anyhow::bail!("{} exists and was not made by strongroom-bench; choose another directory", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "made by strongroom-bench; wiped on its next run\n")?;
    Ok(())
}
