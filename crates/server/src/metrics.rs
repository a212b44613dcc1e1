//! Prometheus metrics (`GET /metrics`, text format 0.0.4): backups and restores by outcome,
//! bytes in and out, dedup, approval latency, refused decisions by reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters shared by the handlers.
#[derive(Default)]
pub struct Metrics {
    pub(crate) backups_ok: AtomicU64,
    pub(crate) backups_failed: AtomicU64,
    pub(crate) restores_ok: AtomicU64,
    pub(crate) restores_failed: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) backup_bytes_read: AtomicU64,
    pub(crate) backup_bytes_new: AtomicU64,
    pub(crate) approvals: AtomicU64,
    pub(crate) approval_seconds_sum: AtomicU64,
    pub(crate) backup_seconds_sum: AtomicU64,
    pub(crate) refused: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// Counts a refused decision.
    pub fn refused(&self, reason: &str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()).entry(reason.to_string()).or_default() += 1;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        counter(
            "strongroom_backups_total",
            "Backups committed or failed.",
            &[("{outcome=\"success\"}", g(&self.backups_ok)), ("{outcome=\"failure\"}", g(&self.backups_failed))],
        );
        counter(
            "strongroom_restores_total",
            "Restore jobs finished, by outcome.",
            &[("{outcome=\"success\"}", g(&self.restores_ok)), ("{outcome=\"failure\"}", g(&self.restores_failed))],
        );
        counter(
            "strongroom_bytes_in_total",
            "Chunk bytes received from clients (compressed).",
            &[("", g(&self.bytes_in))],
        );
        counter("strongroom_bytes_out_total", "Chunk bytes sent to restoring clients.", &[("", g(&self.bytes_out))]);
        counter(
            "strongroom_backup_bytes_read_total",
            "Bytes clients read for backups.",
            &[("", g(&self.backup_bytes_read))],
        );
        counter(
            "strongroom_backup_bytes_new_total",
            "Of those, bytes in chunks the vault did not have.",
            &[("", g(&self.backup_bytes_new))],
        );
        counter(
            "strongroom_approval_latency_seconds_sum",
            "Sum of seconds from restore request to approval.",
            &[("", g(&self.approval_seconds_sum))],
        );
        counter(
            "strongroom_approval_latency_seconds_count",
            "Approvals counted in the sum.",
            &[("", g(&self.approvals))],
        );
        counter(
            "strongroom_backup_duration_seconds_sum",
            "Sum of seconds from backup start to commit.",
            &[("", g(&self.backup_seconds_sum))],
        );
        let refused: Vec<(String, u64)> = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v))
            .collect();
        let rows: Vec<(&str, u64)> = refused.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        counter("strongroom_refused_decisions_total", "Refused access decisions by reason.", &rows);
        let read = g(&self.backup_bytes_read);
        let ratio = if read == 0 { 0.0 } else { 1.0 - g(&self.backup_bytes_new) as f64 / read as f64 };
        let _ = writeln!(s, "# HELP strongroom_dedup_ratio Share of backed-up bytes already stored.\n# TYPE strongroom_dedup_ratio gauge\nstrongroom_dedup_ratio {ratio}");
        s
    }
}
