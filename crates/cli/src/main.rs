//! The `strongroom` command: runs the server and talks to it (login, whoami), plus offline
//! administration on the server host.

mod audit;
mod client;
mod critical;
mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Strongroom: a self-hosted backup vault where nobody restores, deletes or weakens a backup
/// without a fresh passkey assertion bound to that exact operation.
///
/// Exit codes: 0 success, 1 error (the message says what), 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "strongroom", version, about, long_about)]
struct Cli {
    /// Server URL for client commands.
    #[arg(long, global = true, env = "STRONGROOM_SERVER")]
    server: Option<String>,
    /// Access token for client commands (automation, CI); otherwise the stored login is used.
    #[arg(long, global = true, env = "STRONGROOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server (SQLite and keys in the data directory; created on first start).
    ///
    /// On first start it prints a one-time enrollment URL for the first Owner (valid 1 hour).
    Server(ServerArgs),
    /// Sign this command line in: approve the printed code with a passkey in a browser.
    Login,
    /// Forget the stored login (and end its session on the server).
    Logout,
    /// Show who the stored login or token belongs to.
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back up files, directories and disk images into a vault (only new chunks are uploaded).
    Backup {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// What to back up.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the result as JSON (no progress bar).
        #[arg(long)]
        json: bool,
        /// Upload at most this many MiB per second.
        #[arg(long, value_name = "MIB_PER_S", value_parser = positive_rate)]
        limit_upload: Option<f64>,
    },
    /// Restore a snapshot (or some paths of it) once a Restore Operator approves with a passkey.
    ///
    /// Prints the approval URL alone on a line, waits for the approval, then restores: never
    /// outside the target, symlinks in the target not followed, every chunk verified.
    Restore {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Directory to restore into (created if missing).
        #[arg(long)]
        target: PathBuf,
        /// Restore only this snapshot-relative path (repeatable).
        #[arg(long = "include")]
        include: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Download at most this many MiB per second.
        #[arg(long, value_name = "MIB_PER_S", value_parser = positive_rate)]
        limit_download: Option<f64>,
    },
    /// Open an approval URL (a restore or a device login) in the browser to approve it.
    Approve {
        /// The approval URL.
        url: String,
    },
    /// Check a vault: structure, or every byte with --read-data. Exit 1 if anything is damaged.
    Check {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Decrypt and verify every chunk.
        #[arg(long)]
        read_data: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete and undelete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// List a vault's snapshots (and the deleted ones still recoverable).
    Snapshots {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Print JSON: objects with id, time, paths, hostname, summary.
        #[arg(long)]
        json: bool,
    },
    /// Apply retention rules: delete the snapshots no rule keeps (the server decides, on its
    /// own commit times). Data stays until `prune` (or give --prune).
    ///
    /// Rules are applied per (host, paths) group; a snapshot stays if any rule keeps it:
    /// `--keep-daily 7` keeps the newest snapshot of each of the last 7 days that have one.
    #[command(
        after_help = "Example: strongroom forget --vault prod --keep-last 3 --keep-daily 7 --keep-weekly 4 --dry-run"
    )]
    Forget {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Keep the newest N snapshots.
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
        /// Keep the newest snapshot of each of the last N days.
        #[arg(long, default_value_t = 0)]
        keep_daily: usize,
        /// Keep the newest snapshot of each of the last N ISO weeks.
        #[arg(long, default_value_t = 0)]
        keep_weekly: usize,
        /// Keep the newest snapshot of each of the last N months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: usize,
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Prune right after (the vault is taken exclusively meanwhile).
        #[arg(long)]
        prune: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove data no snapshot references and repack mostly-unused packs. Waits for no one:
    /// refused while a backup or restore uses the vault.
    Prune {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Repack a pack when more than this percentage of it is unreferenced.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
        max_unused: u8,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The verifiable audit log: tail it, export it, verify an export offline.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Vaults: create, list, show.
    #[command(subcommand)]
    Vault(VaultCmd),
    /// Roles: assign, revoke, list (server-wide or per vault).
    #[command(subcommand)]
    Role(RoleCmd),
    /// Ask the policy what a user would need for an operation.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Administration on the server host, without the server running.
    #[command(subcommand)]
    Admin(AdminCmd),
}

/// Server settings: command line and `STRONGROOM_*` variables override the `--config` file,
/// which overrides the defaults shown.
#[derive(clap::Args, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerArgs {
    /// TOML file with any of the settings below (keys as the long options, with `_`).
    #[arg(long, env = "STRONGROOM_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Data directory [default: ./strongroom-data].
    #[arg(long, env = "STRONGROOM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8440].
    #[arg(long, env = "STRONGROOM_LISTEN")]
    listen: Option<SocketAddr>,
    /// The URL users reach the server at; the passkey relying party (its host) comes from it
    /// [default: http://localhost:8440].
    #[arg(long, env = "STRONGROOM_PUBLIC_URL")]
    public_url: Option<url::Url>,
    /// The server sits behind a TLS-terminating proxy (allows a non-loopback plain-HTTP listener).
    #[arg(long, env = "STRONGROOM_BEHIND_PROXY")]
    #[serde(default)]
    behind_proxy: bool,
    /// TLS certificate chain (PEM); with --tls-key the server speaks HTTPS itself (rustls).
    #[arg(long, env = "STRONGROOM_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "STRONGROOM_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM file of an attestation root whose authenticators count as hardware (repeatable).
    #[arg(long = "attestation-root", env = "STRONGROOM_ATTESTATION_ROOTS", value_delimiter = ',')]
    #[serde(default)]
    attestation_roots: Vec<PathBuf>,
    /// Lifetime of access tokens in seconds, 1 to 900 [default: 900]. Clients refresh them;
    /// approved restores run on their own grant, so a short lifetime never cuts a restore off.
    #[arg(long, env = "STRONGROOM_ACCESS_TOKEN_SECONDS")]
    access_token_seconds: Option<i64>,
    /// Packs (16 MiB each) a backup uploads between index checkpoints: an interrupted backup
    /// keeps everything before its last checkpoint [default: 8].
    #[arg(long, env = "STRONGROOM_CHECKPOINT_PACKS")]
    checkpoint_packs: Option<usize>,
    /// Where the master key comes from: `file` (DATA/keys/master.key, 0600, made on first
    /// start), `env` (64 hex digits in STRONGROOM_MASTER_KEY) or `passphrase` (Argon2id of
    /// STRONGROOM_MASTER_PASSPHRASE or --master-passphrase-file) [default: file]. A data
    /// directory keeps the source it was set up with.
    #[arg(long, env = "STRONGROOM_MASTER_KEY_SOURCE", value_parser = ["file", "env", "passphrase"])]
    master_key_source: Option<String>,
    /// File holding the master passphrase (with --master-key-source passphrase).
    #[arg(long, env = "STRONGROOM_MASTER_PASSPHRASE_FILE")]
    master_passphrase_file: Option<PathBuf>,
    /// Security Admins (other than the requester) who must approve each critical operation
    /// with a passkey, 1 to 10 [default: 1]: deleting a vault or a protected snapshot,
    /// shortening retention, changing immutability or a vault policy, retiring a key version,
    /// granting Owner or Security Admin, removing a Security Admin.
    #[arg(long, env = "STRONGROOM_CRITICAL_APPROVALS")]
    critical_approvals: Option<u32>,
    /// Requests per minute one client address may make to the endpoints that need no sign-in
    /// (sign-in, enrollment, device authorization, token); more are answered 429 with
    /// Retry-After [default: 300]. Each account also gets 60 attempts a minute.
    #[arg(long, env = "STRONGROOM_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Serve /metrics without a token (default: an Owner's, Security Admin's or Auditor's
    /// token is needed). For a Prometheus that cannot send one.
    #[arg(long, env = "STRONGROOM_OPEN_METRICS")]
    #[serde(default)]
    open_metrics: bool,
    /// Accept passkey assertions made in a cross-origin iframe (client data `crossOrigin:
    /// true`); their `topOrigin` must still be this server's origin. Off by default.
    #[arg(long, env = "STRONGROOM_ALLOW_CROSS_ORIGIN")]
    #[serde(default)]
    allow_cross_origin: bool,
}

/// Settings after merging flags, environment, config file and defaults.
struct Settings {
    data_dir: PathBuf,
    listen: SocketAddr,
    public_url: url::Url,
    behind_proxy: bool,
    tls: Option<(PathBuf, PathBuf)>,
    attestation_roots: Vec<PathBuf>,
    access_token_seconds: i64,
    checkpoint_packs: usize,
    master_key_source: String,
    master_passphrase_file: Option<PathBuf>,
    critical_approvals: u32,
    rate_limit: u32,
    open_metrics: bool,
    allow_cross_origin: bool,
}

impl ServerArgs {
    fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str::<ServerArgs>(&text)
                    .with_context(|| format!("{} is not a valid config file", p.display()))?
            }
            None => ServerArgs::default(),
        };
        let tls = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("give both --tls-cert and --tls-key, or neither"),
        };
        Ok(Settings {
            data_dir: self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./strongroom-data")),
            listen: self.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8440))),
            public_url: match self.public_url.or(file.public_url) {
                Some(u) => u,
                None => url::Url::parse("http://localhost:8440")?,
            },
            behind_proxy: self.behind_proxy || file.behind_proxy,
            tls,
            attestation_roots: if self.attestation_roots.is_empty() {
                file.attestation_roots
            } else {
                self.attestation_roots
            },
            access_token_seconds: self
                .access_token_seconds
                .or(file.access_token_seconds)
                .unwrap_or(identity::token::ACCESS_TOKEN_SECONDS),
            checkpoint_packs: self.checkpoint_packs.or(file.checkpoint_packs).unwrap_or(repo::writer::CHECKPOINT_PACKS),
            master_key_source: self.master_key_source.or(file.master_key_source).unwrap_or_else(|| "file".to_string()),
            master_passphrase_file: self.master_passphrase_file.or(file.master_passphrase_file),
            critical_approvals: self.critical_approvals.or(file.critical_approvals).unwrap_or(1),
            rate_limit: self.rate_limit.or(file.rate_limit).unwrap_or(server::limits::DEFAULT_PER_ADDRESS_PER_MINUTE),
            open_metrics: self.open_metrics || file.open_metrics,
            allow_cross_origin: self.allow_cross_origin || file.allow_cross_origin,
        })
    }
}

/// The master key source named `kind`, its secret read from the environment or a file (never
/// from the command line, where other users could see it).
fn master_source(
    data_dir: &std::path::Path,
    kind: &str,
    passphrase_file: Option<&std::path::Path>,
    secrets: &SecretEnv,
) -> anyhow::Result<Option<repo::crypto::MasterSource>> {
    use repo::crypto::MasterSource;
    Ok(match kind {
        "file" => None,
        "env" => Some(MasterSource::Hex(
            secrets
                .master_key
                .clone()
                .context("--master-key-source env needs STRONGROOM_MASTER_KEY (64 hex digits)")?,
        )),
        "passphrase" => {
            let passphrase = match passphrase_file {
                Some(f) => zeroize::Zeroizing::new(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                None => secrets.passphrase.clone().context(
                    "--master-key-source passphrase needs STRONGROOM_MASTER_PASSPHRASE or --master-passphrase-file",
                )?,
            };
            Some(MasterSource::Passphrase { passphrase, kdf_file: data_dir.join("keys/master.kdf") })
        }
        other => bail!("--master-key-source is file, env or passphrase, not {other}"),
    })
}

/// The secrets a server may take from its environment, read once at start and then removed
/// from the process environment (so no child process and no later read of the environment
/// sees them), held in memory that is wiped when dropped.
#[derive(Default)]
struct SecretEnv {
    master_key: Option<zeroize::Zeroizing<String>>,
    passphrase: Option<zeroize::Zeroizing<String>>,
}

impl SecretEnv {
    /// Takes the variables out of the environment. Called first thing in `main`, while the
    /// process has one thread (changing the environment is only safe then).
    fn take() -> SecretEnv {
        let take = |name: &str| {
            let v = std::env::var(name).ok().map(zeroize::Zeroizing::new);
            if v.is_some() {
                std::env::remove_var(name);
            }
            v
        };
        SecretEnv { master_key: take("STRONGROOM_MASTER_KEY"), passphrase: take("STRONGROOM_MASTER_PASSPHRASE") }
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("a rate in MiB per second, greater than 0 (e.g. 50 or 2.5)".into()),
    }
}

fn print_prune(r: &serde_json::Value, dry_run: bool) {
    let n = |k: &str| r[k].as_i64().unwrap_or(0);
    println!(
        "prune{}: {} chunks in use, {} removed; {} packs deleted, {} repacked, {} orphan packs deleted; {:.1} MB {}",
        if dry_run { " (dry run)" } else { "" },
        n("blobs_used"),
        n("blobs_removed"),
        n("packs_deleted"),
        n("packs_repacked"),
        n("orphans_deleted"),
        n("bytes_freed") as f64 / 1e6,
        if dry_run { "would be freed" } else { "freed" }
    );
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Print the newest records (Auditor, Owner or Security Admin).
    Tail {
        /// How many of the newest records.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
        /// Keep printing new records as they are appended.
        #[arg(long)]
        follow: bool,
        /// Print each record as its canonical JSON (one per line, for a SIEM).
        #[arg(long)]
        json: bool,
    },
    /// Export the log up to a freshly signed checkpoint, for offline verification.
    ///
    /// Writes DIR/records.jsonl (each line exactly one Merkle leaf), DIR/checkpoint (the signed
    /// checkpoint), DIR/checkpoints/<size> (earlier ones) and DIR/audit.vkey (the verifier key).
    Export {
        /// Directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an export offline: tree, checkpoint signatures, consistency with a checkpoint you
    /// saved earlier, and every passkey approval's signature. Exit 0 only if all holds.
    #[command(
        after_help = "Keep your own copy of the server's key (GET /api/v1/audit/key) and of each checkpoint you\nverified; pass them next time with --vkey and --trusted-checkpoint."
    )]
    Verify {
        /// The export directory (or the tar archive the web console's Export button gives).
        dir: PathBuf,
        /// A checkpoint you saved earlier: the log must still contain exactly that tree.
        #[arg(long)]
        trusted_checkpoint: Option<PathBuf>,
        /// Your own copy of the verifier key (instead of the export's audit.vkey).
        #[arg(long)]
        vkey: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum VaultCmd {
    /// Create a vault.
    Create {
        /// Vault name (a-z, 0-9, - _ .).
        name: String,
        /// Test vaults are for trying policy; production vaults need a second person to approve restores.
        #[arg(long, value_parser = ["test", "production"], default_value = "test")]
        kind: String,
        /// Only trusted-attested hardware authenticators may approve restores.
        #[arg(long)]
        require_hardware: bool,
        /// How old (seconds) a restore approval may be when the restore starts [default: 300].
        #[arg(long)]
        approval_max_age: Option<i64>,
        /// Whether the approver must be someone other than the requester [default: yes for production].
        #[arg(long)]
        distinct_approver: Option<bool>,
        /// The server rotates the vault's key when its newest version is this many days old.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        rotate_key_days: Option<u32>,
        /// Days every snapshot is protected, and deleted things recoverable [default: 14; 0: no soft delete].
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=3650))]
        retention_days: Option<u32>,
        /// disabled, enabled or locked (locked can never be undone) [default: disabled].
        #[arg(long, value_parser = ["disabled", "enabled", "locked"])]
        immutability: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the vaults you may see (deleted ones still recoverable included).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one vault and its policy.
    Show {
        /// Vault name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the vault's key-encryption key (Owner or Security Admin): a new version for all
    /// new data, and every existing pack's data key rewrapped under it — no data re-encrypted.
    /// Refused while a backup or restore uses the vault.
    ///
    /// With --retire VERSION it instead retires that version for good (a critical operation):
    /// packs whose footer wraps their data key under it are copied with the footer rewrapped,
    /// snapshots sealed under it are sealed again, then its key file is deleted. Retiring the
    /// current version rotates to a new one first.
    #[command(
        after_help = "Examples:\n  strongroom vault rotate-key prod\n  strongroom vault rotate-key prod --retire 1"
    )]
    RotateKey {
        /// Vault name.
        name: String,
        /// Retire this key version (critical: prints the approval URL and waits).
        #[arg(long, value_name = "VERSION")]
        retire: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a vault (critical): prints the approval URL alone on a line and waits until it is
    /// approved, denied or expired. The vault is then recoverable with `vault undelete` for its
    /// retention period (default 14 days) and purged after. Refused outright while an
    /// immutable vault holds snapshots within retention.
    Delete {
        /// Vault name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring back a deleted vault before it is purged.
    Undelete {
        /// Vault name.
        name: String,
    },
    /// Set the retention: days every snapshot is protected after it is taken, and days deleted
    /// snapshots and vaults stay recoverable (0 turns soft delete off). Longer takes effect at
    /// once; shorter is critical (prints the approval URL and waits), and refused on an
    /// immutable vault.
    SetRetention {
        /// Vault name.
        name: String,
        /// Days (0 to 3650).
        days: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set immutability (critical): `enabled` refuses deleting snapshots within retention and
    /// shortening retention, by anyone; `locked` does the same for good and can never be
    /// changed again; `disabled` lifts it (not possible once locked).
    SetImmutability {
        /// Vault name.
        name: String,
        /// disabled, enabled or locked.
        #[arg(value_parser = ["disabled", "enabled", "locked"])]
        state: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the restore-approval policy (critical).
    SetPolicy {
        /// Vault name.
        name: String,
        /// Only trusted-attested hardware authenticators may approve restores.
        #[arg(long)]
        require_hardware: Option<bool>,
        /// How old (seconds) a restore approval may be when the restore starts.
        #[arg(long)]
        approval_max_age: Option<i64>,
        /// Whether the approver must be someone other than the requester.
        #[arg(long)]
        distinct_approver: Option<bool>,
        /// Rotate the key when its newest version is this many days old (0: only on request).
        #[arg(long)]
        rotate_key_days: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Delete a snapshot: at once when its retention has ended, otherwise a critical operation
    /// (prints the approval URL alone on a line and waits); refused within retention on an
    /// immutable vault. Deleted snapshots stay recoverable for the vault's retention period.
    Delete {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Snapshot id or unique prefix.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring back a deleted snapshot before it is purged.
    Undelete {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Snapshot id or unique prefix.
        id: String,
    },
}

#[derive(clap::Args, Debug)]
struct RoleArgs {
    /// User name.
    #[arg(long)]
    user: String,
    /// owner, contributor, backup-operator, restore-operator, reader, auditor, security-admin.
    #[arg(long)]
    role: String,
    /// Limit to one vault (default: server-wide).
    #[arg(long)]
    vault: Option<String>,
}

#[derive(Subcommand, Debug)]
enum RoleCmd {
    /// Give a user a role.
    Assign(RoleArgs),
    /// Take a role away.
    Revoke(RoleArgs),
    /// Every assignment (Owner, Security Admin, Auditor).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// What would USER need to perform OPERATION (on VAULT)? Validate policy on a test vault first.
    Simulate {
        /// User name.
        #[arg(long)]
        user: String,
        /// Vault name (omit for server-wide operations).
        #[arg(long)]
        vault: Option<String>,
        /// vault-read, vault-create, backup, check, retention, restore (= restore-request), restore-approve, role-manage, policy-change, audit-read.
        #[arg(long)]
        operation: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Add a new token-signing key (used after the next server start; old keys keep verifying).
    RotateTokenKey {
        /// Data directory of the server.
        #[arg(long, env = "STRONGROOM_DATA_DIR", default_value = "./strongroom-data")]
        data_dir: PathBuf,
    },
    /// Print a fresh one-time enrollment link (break-glass recovery; works offline).
    EnrollLink {
        /// Data directory of the server.
        #[arg(long, env = "STRONGROOM_DATA_DIR", default_value = "./strongroom-data")]
        data_dir: PathBuf,
        /// User name: a new user, or an existing one who gets a re-enrollment link.
        #[arg(long)]
        user: String,
        /// Role for a new user: owner, contributor, backup-operator, restore-operator, reader, auditor, security-admin.
        #[arg(long, default_value = "owner")]
        role: String,
        /// Public URL the link should use [default: the one the server last started with].
        #[arg(long, env = "STRONGROOM_PUBLIC_URL")]
        public_url: Option<url::Url>,
    },
}

fn main() {
    let secrets = SecretEnv::take();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli, secrets)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli, secrets: SecretEnv) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Server(args) => run_server(args, &secrets).await,
        Cmd::Admin(AdminCmd::EnrollLink { data_dir, user, role, public_url }) => {
            server::routes::validate_username(&user).map_err(|e| anyhow::anyhow!("{e}"))?;
            server::routes::check_role_name(&role).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !data_dir.join("metadata.db").exists() {
                bail!("{} holds no server data (start the server once first)", data_dir.display());
            }
            let public_url = match public_url {
                Some(u) => u,
                None => match std::fs::read_to_string(data_dir.join("public-url")) {
                    Ok(s) => url::Url::parse(s.trim()).context("the data directory's public-url file is damaged")?,
                    Err(_) => url::Url::parse("http://localhost:8440")?,
                },
            };
            let kind = std::env::var("STRONGROOM_MASTER_KEY_SOURCE").unwrap_or_else(|_| "file".into());
            let passphrase_file = std::env::var_os("STRONGROOM_MASTER_PASSPHRASE_FILE").map(PathBuf::from);
            let master = master_source(&data_dir, &kind, passphrase_file.as_deref(), &secrets)?;
            let config = server::ServerConfig { master, ..server::ServerConfig::new(data_dir, public_url) };
            let state = server::open_state(&config, server::Clock::default()).await?;
            let existing = state.store.user_by_name(&user).await?;
            let (role, uid) = match existing {
                Some(u) => (String::new(), Some(u.id)),
                None => (role, None),
            };
            let url =
                server::routes::create_enroll_link(&state, &user, &role, None, uid, "admin enroll-link (server host)")
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{url}");
            Ok(())
        }
        Cmd::Admin(AdminCmd::RotateTokenKey { data_dir }) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let kid = server::rotate_token_key(&data_dir, now)?;
            println!("{kid}");
            eprintln!("New token-signing key {kid}; restart the server to sign with it (older keys still verify).");
            Ok(())
        }
        Cmd::Backup { vault, paths, json, limit_upload } => {
            let (server, token) = (cli.server.clone(), cli.token.clone());
            tokio::task::spawn_blocking(move || {
                let mut remote = client::remote(server.as_deref(), token.as_deref())?;
                remote.pace = limit_upload.map(remote::Pace::new);
                remote::backup(&remote, &vault, &paths, json)
            })
            .await?
        }
        Cmd::Restore { vault, snapshot, target, include, json, limit_download } => {
            let (server, token) = (cli.server.clone(), cli.token.clone());
            tokio::task::spawn_blocking(move || {
                let mut remote = client::remote(server.as_deref(), token.as_deref())?;
                remote.pace = limit_download.map(remote::Pace::new);
                remote::restore(&remote, &vault, &snapshot, &target, &include, json)
            })
            .await?
        }
        Cmd::Approve { url } => {
            let parsed = url::Url::parse(&url).context("not a URL")?;
            if !(parsed.path().starts_with("/approvals/") || parsed.path() == "/device") {
                bail!("not an approval URL (<server>/approvals/<id> or <server>/device?user_code=…)");
            }
            let opened = std::process::Command::new("xdg-open")
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !opened {
                println!("Open this page in a browser where you are signed in, check the operation and approve with your passkey:\n{url}");
            }
            Ok(())
        }
        Cmd::Check { vault, read_data, json } => {
            let mut api = client::Api::new(cli.server.as_deref(), cli.token.as_deref())?;
            let r = api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/vaults/{vault}/check"),
                    Some(serde_json::json!({"read_data": read_data})),
                )
                .await?;
            let errors = r["errors"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for w in r["warnings"].as_array().into_iter().flatten() {
                    println!(
                        "warning: {}: {}",
                        w["object"].as_str().unwrap_or(""),
                        w["message"].as_str().unwrap_or("")
                    );
                }
                for e in &errors {
                    println!("error: {}: {}", e["object"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or(""));
                }
                println!(
                    "{vault}: {} snapshots, {} trees, {} packs{}; {}",
                    r["snapshots"],
                    r["trees"],
                    r["packs"],
                    if read_data { format!(", {} chunks verified", r["blobs_verified"]) } else { String::new() },
                    if errors.is_empty() { "no errors" } else { "DAMAGED" }
                );
            }
            if !errors.is_empty() {
                bail!("{} errors in vault {vault}", errors.len());
            }
            Ok(())
        }
        Cmd::Snapshots { vault, json } => {
            let mut api = client::Api::new(cli.server.as_deref(), cli.token.as_deref())?;
            let v = api.call(reqwest::Method::GET, &format!("/api/v1/vaults/{vault}/snapshots"), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["snapshots"])?);
            } else {
                let list = v["snapshots"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("No snapshots in {vault} yet: strongroom backup --vault {vault} PATH...");
                }
                for s in list {
                    let paths: Vec<String> = serde_json::from_value(s["paths"].clone()).unwrap_or_default();
                    println!(
                        "{}  {}  {:>8.1} MB  {}  {}",
                        s["short_id"].as_str().unwrap_or("?"),
                        s["time"].as_str().unwrap_or("?"),
                        s["summary"]["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                        s["hostname"].as_str().unwrap_or(""),
                        paths.join(" ")
                    );
                }
                let deleted = v["deleted"].as_array().cloned().unwrap_or_default();
                if !deleted.is_empty() {
                    println!("Deleted (strongroom snapshot undelete --vault {vault} ID brings one back):");
                }
                for s in deleted {
                    println!(
                        "{}  {}  deleted by {}, purged after {}",
                        s["short_id"].as_str().unwrap_or("?"),
                        s["time"].as_str().unwrap_or("?"),
                        s["deleted_by"].as_str().unwrap_or("?"),
                        unix_to_rfc3339(s["purge_at"].as_i64().unwrap_or(0))
                    );
                }
            }
            Ok(())
        }
        Cmd::Forget { vault, keep_last, keep_daily, keep_weekly, keep_monthly, dry_run, prune, json } => {
            if keep_last + keep_daily + keep_weekly + keep_monthly == 0 {
                bail!("give at least one --keep-last/--keep-daily/--keep-weekly/--keep-monthly rule (none would delete every snapshot)");
            }
            let mut api = client::Api::new(cli.server.as_deref(), cli.token.as_deref())?;
            let v = api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/vaults/{vault}/forget"),
                    Some(serde_json::json!({
                        "keep_last": keep_last, "keep_daily": keep_daily, "keep_weekly": keep_weekly,
                        "keep_monthly": keep_monthly, "dry_run": dry_run, "prune": prune,
                    })),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for d in v["snapshots"].as_array().into_iter().flatten() {
                let keep = d["keep"].as_bool().unwrap_or(true);
                let reasons: Vec<String> = serde_json::from_value(d["reasons"].clone()).unwrap_or_default();
                println!(
                    "{}  {}  {}  {}",
                    if keep {
                        "keep  "
                    } else if dry_run {
                        "would remove"
                    } else {
                        "remove"
                    },
                    d["id"].as_str().unwrap_or("?").get(..8).unwrap_or("?"),
                    d["time"].as_str().unwrap_or("?"),
                    reasons.join(",")
                );
            }
            println!(
                "{vault}: {} kept, {} {}",
                v["kept"],
                v["removed"],
                if dry_run { "would be removed (dry run)" } else { "removed" }
            );
            if !v["prune"].is_null() {
                print_prune(&v["prune"], false);
            } else if !dry_run && v["removed"].as_u64().unwrap_or(0) > 0 {
                println!("Their data stays until: strongroom prune --vault {vault}");
            }
            Ok(())
        }
        Cmd::Prune { vault, dry_run, max_unused, json } => {
            let mut api = client::Api::new(cli.server.as_deref(), cli.token.as_deref())?;
            let v = api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/vaults/{vault}/prune"),
                    Some(serde_json::json!({"dry_run": dry_run, "max_unused_percent": max_unused})),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_prune(&v, dry_run);
            }
            Ok(())
        }
        Cmd::Audit(AuditCmd::Verify { dir, trusted_checkpoint, vkey, json }) => {
            audit::verify(&dir, trusted_checkpoint.as_ref(), vkey.as_ref(), json)
        }
        Cmd::Audit(AuditCmd::Tail { lines, follow, json }) => {
            let mut api = client::Api::new(cli.server.as_deref(), cli.token.as_deref())?;
            audit::tail(&mut api, lines, follow, json).await
        }
        Cmd::Audit(AuditCmd::Export { out }) => {
            let mut api = client::Api::new(cli.server.as_deref(), cli.token.as_deref())?;
            audit::export(&mut api, &out).await
        }
        Cmd::Vault(cmd) => vault_cmd(cli.server.as_deref(), cli.token.as_deref(), cmd).await,
        Cmd::Snapshot(cmd) => snapshot_cmd(cli.server.as_deref(), cli.token.as_deref(), cmd).await,
        Cmd::Role(cmd) => role_cmd(cli.server.as_deref(), cli.token.as_deref(), cmd).await,
        Cmd::Policy(PolicyCmd::Simulate { user, vault, operation, json }) => {
            let operation = if operation == "restore" { "restore-request".to_string() } else { operation };
            let mut api = client::Api::new(cli.server.as_deref(), cli.token.as_deref())?;
            let v = api
                .call(
                    reqwest::Method::POST,
                    "/api/v1/policy/simulate",
                    Some(serde_json::json!({"username": user, "vault": vault, "operation": operation})),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{} → {} on {}:", user, operation, vault.as_deref().unwrap_or("the server"));
                println!("  with a software passkey: {}", describe(&v["with_software_passkey"]));
                println!("  with a hardware passkey: {}", describe(&v["with_hardware_passkey"]));
                if let Some(a) = v.get("as_approver_of_others").filter(|a| !a.is_null()) {
                    println!(
                        "  approving others' restores: software {}, hardware {}",
                        describe(&a["software"]),
                        describe(&a["hardware"])
                    );
                }
            }
            Ok(())
        }
        Cmd::Login => client::login(cli.server.as_deref()).await,
        Cmd::Logout => client::logout(cli.server.as_deref()).await,
        Cmd::Whoami { json } => client::whoami(cli.server.as_deref(), cli.token.as_deref(), json).await,
    }
}

async fn run_server(args: ServerArgs, secrets: &SecretEnv) -> anyhow::Result<()> {
    let args = args.resolve()?;
    use std::io::IsTerminal;
    // Logs go to stderr; stdout carries only what a script may read (the first-start link).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let tls = args.tls.is_some();
    if !args.listen.ip().is_loopback() && !args.behind_proxy && !tls {
        bail!(
            "refusing to serve plain HTTP on {}: passkeys need HTTPS on any origin but localhost. \
             Put a TLS-terminating proxy in front and pass --behind-proxy (with an https --public-url)",
            args.listen
        );
    }
    if args.behind_proxy && args.public_url.scheme() != "https" && args.public_url.host_str() != Some("localhost") {
        bail!(
            "--behind-proxy needs an https --public-url: browsers only allow passkeys on HTTPS origins and localhost"
        );
    }
    let config = server::ServerConfig {
        attestation_roots: args.attestation_roots.clone(),
        access_token_seconds: args.access_token_seconds,
        checkpoint_packs: args.checkpoint_packs,
        critical_approvals: args.critical_approvals,
        rate_limit_per_minute: args.rate_limit,
        behind_proxy: args.behind_proxy,
        open_metrics: args.open_metrics,
        allow_cross_origin: args.allow_cross_origin,
        master: master_source(
            &args.data_dir,
            &args.master_key_source,
            args.master_passphrase_file.as_deref(),
            secrets,
        )?,
        ..server::ServerConfig::new(args.data_dir.clone(), args.public_url.clone())
    };
    let state = Arc::new(server::open_state(&config, server::Clock::default()).await?);
    // Remembered so offline tools on this host (admin enroll-link) print links users can open.
    std::fs::write(args.data_dir.join("public-url"), format!("{}\n", args.public_url))
        .with_context(|| format!("writing {}", args.data_dir.join("public-url").display()))?;
    if let Some(url) = server::first_start_link(&state).await.map_err(|e| anyhow::anyhow!("{e}"))? {
        eprintln!("No users yet. Enroll the first Owner within one hour at:");
        println!("{url}");
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        tracing::info!("shutting down");
    };
    tracing::info!(listen = %args.listen, public_url = %args.public_url, tls, data_dir = %args.data_dir.display(), "strongroom server started");
    if let Some((cert, key)) = &args.tls {
        server::serve_tls(state, args.listen, cert, key, shutdown)
            .await
            .with_context(|| format!("serving HTTPS on {} with {}", args.listen, cert.display()))?;
    } else {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        server::serve(state, listener, shutdown).await?;
    }
    Ok(())
}

fn describe(d: &serde_json::Value) -> String {
    match d["decision"].as_str() {
        Some("allow") => "allowed".into(),
        Some("approval_required") => format!(
            "allowed once approved by a {} ({}{}approval at most {} s old)",
            d["approver_role"].as_str().unwrap_or("?"),
            if d["distinct_approver"].as_bool() == Some(true) { "another person, " } else { "" },
            if d["require_hardware"].as_bool() == Some(true) { "hardware key, " } else { "" },
            d["max_age"]
        ),
        Some("step_up") => format!("needs a passkey sign-in at most {} s old", d["max_age"]),
        Some("deny") => format!("refused ({})", d["reason"].as_str().unwrap_or("?")),
        _ => d.to_string(),
    }
}

fn unix_to_rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

fn print_vault(v: &serde_json::Value) {
    let p = &v["policy"];
    println!(
        "{}  {}  approvals: {}{}, at most {} s old; retention {} days, immutability {}{}",
        v["name"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        if p["require_hardware"].as_bool() == Some(true) { "hardware passkey" } else { "any passkey" },
        if p["distinct_approver"].as_bool() == Some(true) { ", another person" } else { "" },
        p["approval_max_age"],
        p["retention_days"],
        p["immutability"].as_str().unwrap_or("disabled"),
        match v["purge_at"].as_i64() {
            Some(t) => format!("; DELETED, purged after {}", unix_to_rfc3339(t)),
            None => String::new(),
        }
    );
    if let Some(versions) = v["key_versions"].as_array() {
        println!("  key versions {} (current {})", serde_json::Value::from(versions.clone()), v["current_key_version"]);
    }
}

/// Prints the result of a gated change: JSON, or `message`.
fn print_result(
    result: &serde_json::Value,
    json: bool,
    message: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(result)?);
    } else {
        println!("{}", message(result));
    }
    Ok(())
}

async fn snapshot_cmd(server: Option<&str>, token: Option<&str>, cmd: SnapshotCmd) -> anyhow::Result<()> {
    let mut api = client::Api::new(server, token)?;
    match cmd {
        SnapshotCmd::Delete { vault, id, json } => {
            let answer =
                api.call(reqwest::Method::DELETE, &format!("/api/v1/vaults/{vault}/snapshots/{id}"), None).await?;
            let r = critical::follow(&mut api, answer).await?;
            print_result(&r, json, |r| match r["purge_at"].as_i64() {
                Some(t) => format!(
                    "snapshot {} deleted; recoverable until {} (strongroom snapshot undelete --vault {vault} {id})",
                    r["snapshot"].as_str().unwrap_or("?"),
                    unix_to_rfc3339(t)
                ),
                None => {
                    format!("snapshot {} deleted for good (soft delete is off)", r["snapshot"].as_str().unwrap_or("?"))
                }
            })
        }
        SnapshotCmd::Undelete { vault, id } => {
            let r = api
                .call(reqwest::Method::POST, &format!("/api/v1/vaults/{vault}/snapshots/{id}/undelete"), None)
                .await?;
            println!("snapshot {} is back in vault {vault}", r["snapshot"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

async fn vault_cmd(server: Option<&str>, token: Option<&str>, cmd: VaultCmd) -> anyhow::Result<()> {
    let mut api = client::Api::new(server, token)?;
    match cmd {
        VaultCmd::Create {
            name,
            kind,
            require_hardware,
            approval_max_age,
            distinct_approver,
            rotate_key_days,
            retention_days,
            immutability,
            json,
        } => {
            let v = api
                .call(
                    reqwest::Method::POST,
                    "/api/v1/vaults",
                    Some(serde_json::json!({"name": name, "kind": kind, "require_hardware": require_hardware,
                        "approval_max_age": approval_max_age, "distinct_approver": distinct_approver,
                        "rotate_key_days": rotate_key_days, "retention_days": retention_days,
                        "immutability": immutability})),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?)
            } else {
                print_vault(&v)
            }
        }
        VaultCmd::List { json } => {
            let v = api.call(reqwest::Method::GET, "/api/v1/vaults", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["vaults"])?);
            } else {
                let list = v["vaults"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("No vaults you can see. Create one: strongroom vault create NAME");
                }
                list.iter().for_each(print_vault);
            }
        }
        VaultCmd::Show { name, json } => {
            let v = api.call(reqwest::Method::GET, &format!("/api/v1/vaults/{name}"), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?)
            } else {
                print_vault(&v)
            }
        }
        VaultCmd::RotateKey { name, retire: Some(version), json } => {
            let answer = api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/vaults/{name}/retire-key"),
                    Some(serde_json::json!({"version": version})),
                )
                .await?;
            let r = critical::follow(&mut api, answer).await?;
            print_result(&r, json, |r| {
                let rep = &r["report"];
                format!(
                    "{name}: key version {version} retired{}; {} packs ({:.1} MB) given a rewrapped footer, {} snapshots resealed; versions left: {}",
                    r["rotated_to"].as_u64().map(|v| format!(" (rotated to version {v} first)")).unwrap_or_default(),
                    rep["packs_rewritten"],
                    rep["bytes_rewritten"].as_f64().unwrap_or(0.0) / 1e6,
                    rep["snapshots_resealed"],
                    rep["versions"]
                )
            })?;
        }
        VaultCmd::Delete { name, json } => {
            let answer = api.call(reqwest::Method::DELETE, &format!("/api/v1/vaults/{name}"), None).await?;
            let r = critical::follow(&mut api, answer).await?;
            print_result(&r, json, |r| match r["purge_at"].as_i64() {
                Some(t) => format!(
                    "vault {name} deleted; recoverable until {} with: strongroom vault undelete {name}",
                    unix_to_rfc3339(t)
                ),
                None => format!("vault {name} deleted for good (soft delete was off)"),
            })?;
        }
        VaultCmd::Undelete { name } => {
            api.call(reqwest::Method::POST, &format!("/api/v1/vaults/{name}/undelete"), None).await?;
            println!("vault {name} is back");
        }
        VaultCmd::SetRetention { name, days, json } => {
            let answer = api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/vaults/{name}/retention"),
                    Some(serde_json::json!({"days": days})),
                )
                .await?;
            let r = critical::follow(&mut api, answer).await?;
            print_result(&r, json, |_| format!("{name}: retention is now {days} days"))?;
        }
        VaultCmd::SetImmutability { name, state, json } => {
            let answer = api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/vaults/{name}/immutability"),
                    Some(serde_json::json!({"state": state})),
                )
                .await?;
            let r = critical::follow(&mut api, answer).await?;
            print_result(&r, json, |_| format!("{name}: immutability is now {state}"))?;
        }
        VaultCmd::SetPolicy { name, require_hardware, approval_max_age, distinct_approver, rotate_key_days, json } => {
            let answer = api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/vaults/{name}/policy"),
                    Some(
                        serde_json::json!({"require_hardware": require_hardware, "approval_max_age": approval_max_age,
                        "distinct_approver": distinct_approver, "rotate_key_days": rotate_key_days}),
                    ),
                )
                .await?;
            let r = critical::follow(&mut api, answer).await?;
            print_result(&r, json, |r| format!("{name}: policy is now {}", r["policy"]))?;
        }
        VaultCmd::RotateKey { name, retire: None, json } => {
            let v = api.call(reqwest::Method::POST, &format!("/api/v1/vaults/{name}/rotate-key"), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?)
            } else {
                println!(
                    "{name}: key version {} now encrypts new data; {} packs' data keys rewrapped (versions kept: {})",
                    v["new_version"], v["packs_rewrapped"], v["versions"]
                );
            }
        }
    }
    Ok(())
}

async fn role_cmd(server: Option<&str>, token: Option<&str>, cmd: RoleCmd) -> anyhow::Result<()> {
    let mut api = client::Api::new(server, token)?;
    match cmd {
        RoleCmd::Assign(a) => {
            let answer = api
                .call(
                    reqwest::Method::POST,
                    "/api/v1/roles",
                    Some(serde_json::json!({"username": a.user, "role": a.role, "vault": a.vault})),
                )
                .await?;
            // Granting Owner or Security Admin is critical: the server answers with an approval.
            if !answer.is_null() {
                critical::follow(&mut api, answer).await?;
            }
            println!("{} is now {}{}", a.user, a.role, a.vault.map(|v| format!(" on vault {v}")).unwrap_or_default());
        }
        RoleCmd::Revoke(a) => {
            let answer = api
                .call(
                    reqwest::Method::POST,
                    "/api/v1/roles/revoke",
                    Some(serde_json::json!({"username": a.user, "role": a.role, "vault": a.vault})),
                )
                .await?;
            if !answer.is_null() {
                critical::follow(&mut api, answer).await?;
            }
            println!(
                "{} is no longer {}{}",
                a.user,
                a.role,
                a.vault.map(|v| format!(" on vault {v}")).unwrap_or_default()
            );
        }
        RoleCmd::List { json } => {
            let v = api.call(reqwest::Method::GET, "/api/v1/roles", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["roles"])?);
            } else {
                for r in v["roles"].as_array().into_iter().flatten() {
                    println!(
                        "{:20} {:18} {}",
                        r["username"].as_str().unwrap_or("?"),
                        r["role"].as_str().unwrap_or("?"),
                        r["vault"].as_str().unwrap_or("(all vaults)")
                    );
                }
            }
        }
    }
    Ok(())
}
