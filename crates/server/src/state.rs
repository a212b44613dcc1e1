//! Server state and first start: the data directory, keys, and the shared handles every
//! request uses. The server is one of the three places that read the clock; it does so through
//! [`Clock`] so tests can move time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use identity::proto::AttestationCaList;
use identity::token::StoredKey;
use identity::{RelyingParty, TokenSigner};
use store::Store;
use url::Url;

/// Seconds a WebAuthn ceremony stays valid.
pub const CEREMONY_SECONDS: i64 = 300;
/// Seconds an enrollment link stays valid.
pub const ENROLL_LINK_SECONDS: i64 = 3600;
/// Lifetime of a browser session.
pub const BROWSER_SESSION_SECONDS: i64 = 12 * 3600;
/// Lifetime of a device (CLI) session and its refresh tokens.
pub const DEVICE_SESSION_SECONDS: i64 = 30 * 24 * 3600;
/// Lifetime of a device code.
pub const DEVICE_CODE_SECONDS: i64 = 600;
/// Minimum polling interval for device codes.
pub const DEVICE_POLL_INTERVAL: i64 = 5;
/// The audience of access tokens.
pub const AUDIENCE: &str = "strongroom";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "sr_session";

/// The server's clock: real time plus an offset tests may move.
#[derive(Clone, Default)]
pub struct Clock(Arc<AtomicI64>);

impl Clock {
    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp() + self.0.load(Ordering::Relaxed)
    }
    /// Now, to the nanosecond (snapshot times: two commits in one second keep their order).
    pub fn now_precise(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc() + time::Duration::seconds(self.0.load(Ordering::Relaxed))
    }
    /// Moves this clock forward (tests only use it).
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::Relaxed);
    }
}

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where metadata, keys and data live.
    pub data_dir: PathBuf,
    /// The URL users reach the server at; the WebAuthn relying party comes from it.
    pub public_url: Url,
    /// PEM files of attestation roots whose authenticators count as hardware.
    pub attestation_roots: Vec<PathBuf>,
    /// Lifetime of access tokens, 1 to 900 seconds (default 900).
    pub access_token_seconds: i64,
    /// Packs a backup uploads between index checkpoints (what an interrupted backup keeps).
    pub checkpoint_packs: usize,
    /// Where the master key comes from (default: the key file `keys/master.key`).
    pub master: Option<repo::crypto::MasterSource>,
    /// Security Admin approvals a critical operation needs besides the requester's own
    /// step-up, 1 to 10 (default 1).
    pub critical_approvals: u32,
    /// Requests per minute one client address may make to the endpoints that need no sign-in
    /// (default [`crate::limits::DEFAULT_PER_ADDRESS_PER_MINUTE`]).
    pub rate_limit_per_minute: u32,
    /// Sign-in, enrollment and token attempts per minute for one account (default
    /// [`crate::limits::DEFAULT_PER_ACCOUNT_PER_MINUTE`]).
    pub account_rate_limit_per_minute: u32,
    /// Behind a reverse proxy: the client address is the last `X-Forwarded-For` hop.
    pub behind_proxy: bool,
    /// `/metrics` answers without a token (default: an Owner's, Security Admin's or
    /// Auditor's token is needed).
    pub open_metrics: bool,
    /// Accept WebAuthn assertions whose client data says `crossOrigin: true` (an iframe on
    /// another origin); `topOrigin`, when present, must then be the public URL's origin.
    pub allow_cross_origin: bool,
}

impl ServerConfig {
    /// The defaults for a data directory and public URL.
    pub fn new(data_dir: PathBuf, public_url: Url) -> ServerConfig {
        ServerConfig {
            data_dir,
            public_url,
            attestation_roots: Vec::new(),
            access_token_seconds: identity::token::ACCESS_TOKEN_SECONDS,
            checkpoint_packs: repo::writer::CHECKPOINT_PACKS,
            master: None,
            critical_approvals: 1,
            rate_limit_per_minute: crate::limits::DEFAULT_PER_ADDRESS_PER_MINUTE,
            account_rate_limit_per_minute: crate::limits::DEFAULT_PER_ACCOUNT_PER_MINUTE,
            behind_proxy: false,
            open_metrics: false,
            allow_cross_origin: false,
        }
    }
}

/// Everything a request handler needs.
pub struct AppState {
    /// Metadata.
    pub store: Store,
    /// WebAuthn relying party.
    pub rp: RelyingParty,
    /// Token signer.
    pub signer: TokenSigner,
    /// The public URL (no trailing slash in links we print).
    pub public_url: Url,
    /// The clock.
    pub clock: Clock,
    /// Cookies get the `Secure` attribute (HTTPS public URL).
    pub secure_cookies: bool,
    /// The data directory (vault repositories live in `vaults/`).
    pub data_dir: PathBuf,
    /// The master key that wraps every vault's key-encryption keys.
    pub master_key: repo::crypto::MasterKey,
    /// Open vault repositories and backup sessions.
    pub vaults: crate::backups::Vaults,
    /// Prometheus counters.
    pub metrics: crate::metrics::Metrics,
    /// Lifetime of access tokens in seconds.
    pub access_token_seconds: i64,
    /// Packs a backup uploads between index checkpoints.
    pub checkpoint_packs: usize,
    /// The verifiable audit log.
    pub audit_log: crate::audit_log::AuditLog,
    /// Security Admin approvals a critical operation needs.
    pub critical_approvals: u32,
    /// Rate limits of the unauthenticated endpoints, and refused sign-ins being tallied.
    pub limits: crate::limits::Limits,
    /// `/metrics` needs no token.
    pub open_metrics: bool,
    /// Cross-origin WebAuthn assertions are accepted.
    pub allow_cross_origin: bool,
}

/// Errors of start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// I/O on the data directory.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(#[from] store::StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |e| StartError::Io(path.to_path_buf(), e)
}

/// Writes a new file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io(path))
}

/// Creates (first start) or opens the data directory and builds the state.
pub async fn open_state(config: &ServerConfig, clock: Clock) -> Result<AppState, StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = &config.data_dir;
    for d in [dir.clone(), dir.join("keys")] {
        if !d.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io(&d))?;
        }
    }
    let store = Store::open_sqlite(&dir.join("metadata.db")).await?;
    let master_key = open_master_key(dir, config)?;
    let keys_path = dir.join("keys/token-signing.json");
    let keys: Vec<StoredKey> = match std::fs::read(&keys_path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| StartError::Config(format!("{}: {e}", keys_path.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = vec![StoredKey::generate(&mut rand_core::OsRng, clock.now())];
            let json = serde_json::to_vec_pretty(&keys).map_err(|e| StartError::Config(e.to_string()))?;
            write_private(&keys_path, &json)?;
            keys
        }
        Err(e) => return Err(StartError::Io(keys_path, e)),
    };
    if !(1..=identity::token::ACCESS_TOKEN_SECONDS).contains(&config.access_token_seconds) {
        return Err(StartError::Config(format!(
            "access_token_seconds must be between 1 and {}",
            identity::token::ACCESS_TOKEN_SECONDS
        )));
    }
    if !(1..=10).contains(&config.critical_approvals) {
        return Err(StartError::Config("critical_approvals must be between 1 and 10".into()));
    }
    if config.checkpoint_packs == 0 {
        return Err(StartError::Config("checkpoint_packs must be at least 1".into()));
    }
    let issuer = config.public_url.as_str().trim_end_matches('/').to_string();
    let signer = TokenSigner::new(&issuer, AUDIENCE, &keys).map_err(|e| StartError::Config(e.to_string()))?;
    let audit_key = load_audit_key(dir, &config.public_url)?;
    let audit_log = crate::audit_log::AuditLog::open(&store, audit_key).await.map_err(StartError::Config)?;
    let roots = attestation_roots(&config.attestation_roots)?;
    let rp = RelyingParty::new("Strongroom", &config.public_url, roots)
        .map_err(|e| StartError::Config(e.to_string()))?
        .with_cross_origin(config.allow_cross_origin);
    Ok(AppState {
        store,
        rp,
        signer,
        public_url: config.public_url.clone(),
        clock,
        secure_cookies: config.public_url.scheme() == "https",
        data_dir: dir.clone(),
        master_key,
        vaults: Default::default(),
        metrics: Default::default(),
        access_token_seconds: config.access_token_seconds,
        checkpoint_packs: config.checkpoint_packs,
        audit_log,
        critical_approvals: config.critical_approvals,
        limits: crate::limits::Limits::new(
            config.rate_limit_per_minute,
            config.account_rate_limit_per_minute,
            config.behind_proxy,
        ),
        open_metrics: config.open_metrics,
        allow_cross_origin: config.allow_cross_origin,
    })
}

/// Opens the master key from the configured source and checks it against `keys/master.check`
/// (written on first start): a data directory is never used with another key, and a source
/// other than the one it was set up with is refused before any key file is created.
fn open_master_key(dir: &Path, config: &ServerConfig) -> Result<repo::crypto::MasterKey, StartError> {
    use repo::crypto::{MasterKey, MasterSource};
    let source = config.master.clone().unwrap_or_else(|| MasterSource::File(dir.join("keys/master.key")));
    let check_path = dir.join("keys/master.check");
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Check {
        source: String,
        check: String,
    }
    let recorded: Option<Check> = match std::fs::read(&check_path) {
        Ok(b) => {
            Some(serde_json::from_slice(&b).map_err(|e| StartError::Config(format!("{}: {e}", check_path.display())))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(StartError::Io(check_path, e)),
    };
    if let Some(r) = &recorded {
        if r.source != source.kind() {
            return Err(StartError::Config(format!(
                "this data directory's master key comes from the {} source, not {}: start with --master-key-source {}",
                r.source,
                source.kind(),
                r.source
            )));
        }
    }
    if let (Some(_), MasterSource::File(path)) = (&recorded, &source) {
        if !path.exists() {
            return Err(StartError::Config(format!(
                "{} is missing: this data directory's data is encrypted under it; restore it from your key backup",
                path.display()
            )));
        }
    }
    let key = MasterKey::open(&source, &mut rand_core::OsRng)
        .map_err(|e| StartError::Config(format!("master key ({}): {e}", source.kind())))?;
    match recorded {
        Some(r) if !key.matches(&r.check) => Err(StartError::Config(format!(
            "the master key from the {} source does not match this data directory (wrong key or passphrase): refusing to start",
            source.kind()
        ))),
        Some(_) => Ok(key),
        None => {
            let c = Check { source: source.kind().to_string(), check: key.check_value(&mut rand_core::OsRng) };
            let json = serde_json::to_vec_pretty(&c).map_err(|e| StartError::Config(e.to_string()))?;
            write_private(&check_path, &json)?;
            Ok(key)
        }
    }
}

/// The audit log's name (checkpoint origin): the public URL's host, port and `/audit`.
pub fn audit_origin(public_url: &Url) -> String {
    let host = public_url.host_str().unwrap_or("strongroom");
    match public_url.port() {
        Some(p) => format!("{host}:{p}/audit"),
        None => format!("{host}/audit"),
    }
}

/// The Ed25519 audit signing key: `keys/audit.key` (32-byte seed, 0600), made on first start.
fn load_audit_key(dir: &Path, public_url: &Url) -> Result<auditlog::AuditKey, StartError> {
    let path = dir.join("keys/audit.key");
    let seed: [u8; 32] = match std::fs::read(&path) {
        Ok(bytes) => {
            bytes.try_into().map_err(|_| StartError::Config(format!("{}: an audit key is 32 bytes", path.display())))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
            write_private(&path, &seed)?;
            seed
        }
        Err(e) => return Err(StartError::Io(path, e)),
    };
    auditlog::AuditKey::from_seed(&audit_origin(public_url), seed).map_err(|e| StartError::Config(e.to_string()))
}

fn attestation_roots(paths: &[PathBuf]) -> Result<AttestationCaList, StartError> {
    let mut list = AttestationCaList::default();
    for p in paths {
        let pem = std::fs::read(p).map_err(io(p))?;
        let one = AttestationCaList::try_from(pem.as_slice())
            .map_err(|e| StartError::Config(format!("{}: not a usable attestation root: {e:?}", p.display())))?;
        list.union(&one);
    }
    Ok(list)
}

impl AppState {
    /// A link under the public URL.
    pub fn link(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }
}

/// Adds a new token-signing key to the data directory; the newest key signs after the next
/// start, older ones keep verifying tokens already issued. Returns the new key id.
pub fn rotate_token_key(data_dir: &Path, now: i64) -> Result<String, StartError> {
    let path = data_dir.join("keys/token-signing.json");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let mut keys: Vec<StoredKey> =
        serde_json::from_slice(&bytes).map_err(|e| StartError::Config(format!("{}: {e}", path.display())))?;
    let key = StoredKey::generate(&mut rand_core::OsRng, now);
    let kid = key.kid.clone();
    keys.push(key);
    let json = serde_json::to_vec_pretty(&keys).map_err(|e| StartError::Config(e.to_string()))?;
    let tmp = path.with_extension("json.new");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, &json)?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(kid)
}
