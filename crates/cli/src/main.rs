//! The `strongroom` command: runs the server and talks to it (login, whoami), plus offline
//! administration on the server host.

mod client;

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
    /// Administration on the server host, without the server running.
    #[command(subcommand)]
    Admin(AdminCmd),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Data directory.
    #[arg(long, env = "STRONGROOM_DATA_DIR", default_value = "./strongroom-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "STRONGROOM_LISTEN", default_value = "127.0.0.1:8440")]
    listen: SocketAddr,
    /// The URL users reach the server at; the passkey relying party (its host) comes from it.
    #[arg(long, env = "STRONGROOM_PUBLIC_URL", default_value = "http://localhost:8440")]
    public_url: url::Url,
    /// The server sits behind a TLS-terminating proxy (allows a non-loopback plain-HTTP listener).
    #[arg(long, env = "STRONGROOM_BEHIND_PROXY")]
    behind_proxy: bool,
    /// PEM file of an attestation root whose authenticators count as hardware (repeatable).
    #[arg(long = "attestation-root", env = "STRONGROOM_ATTESTATION_ROOTS", value_delimiter = ',')]
    attestation_roots: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
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
        /// Public URL the link should use.
        #[arg(long, env = "STRONGROOM_PUBLIC_URL", default_value = "http://localhost:8440")]
        public_url: url::Url,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Server(args) => run_server(args).await,
        Cmd::Admin(AdminCmd::EnrollLink { data_dir, user, role, public_url }) => {
            server::routes::validate_username(&user).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !server::routes::ROLES.contains(&role.as_str()) {
                bail!("unknown role {role:?}; one of {}", server::routes::ROLES.join(", "));
            }
            if !data_dir.join("metadata.db").exists() {
                bail!("{} holds no server data (start the server once first)", data_dir.display());
            }
            let config = server::ServerConfig { data_dir, public_url, attestation_roots: Vec::new() };
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
        Cmd::Login => client::login(cli.server.as_deref()).await,
        Cmd::Logout => client::logout(cli.server.as_deref()).await,
        Cmd::Whoami { json } => client::whoami(cli.server.as_deref(), cli.token.as_deref(), json).await,
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    if !args.listen.ip().is_loopback() && !args.behind_proxy && args.public_url.scheme() != "https" {
        bail!(
            "refusing to serve plain HTTP on {}: passkeys need HTTPS on any origin but localhost. \
             Put a TLS-terminating proxy in front and pass --behind-proxy with an https --public-url",
            args.listen
        );
    }
    let config = server::ServerConfig {
        data_dir: args.data_dir.clone(),
        public_url: args.public_url.clone(),
        attestation_roots: args.attestation_roots.clone(),
    };
    let state = Arc::new(server::open_state(&config, server::Clock::default()).await?);
    if let Some(url) = server::first_start_link(&state).await.map_err(|e| anyhow::anyhow!("{e}"))? {
        println!("No users yet. Enroll the first Owner within one hour at:\n{url}");
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, public_url = %args.public_url, data_dir = %args.data_dir.display(), "strongroom server started");
    server::serve(state, listener, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
    .await?;
    Ok(())
}
