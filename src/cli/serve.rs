//! `xfer serve`: its flags, start-up, SIGHUP reloads and shutdown signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{IdentityArgs, parse_duration, parse_size};
use crate::connection::Timeouts;
use crate::server::{self, Reloader, ServeConfig, Server};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:5001")]
    pub listen: SocketAddr,
    /// Folder to receive into and serve from (created if missing).
    #[arg(long, default_value = "received")]
    pub root: PathBuf,
    /// Keep files in an S3-compatible bucket instead of --root:
    /// s3://BUCKET or s3://BUCKET/PREFIX. Keys, region and endpoint come
    /// from the AWS_* environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT_URL); several servers may share one bucket.
    #[cfg(feature = "s3")]
    #[arg(long, value_name = "URL", conflicts_with = "root")]
    pub store: Option<crate::objects::Location>,
    /// The object store's address, e.g. http://garage-1:3900 (default:
    /// AWS_ENDPOINT_URL, else AWS S3).
    #[cfg(feature = "s3")]
    #[arg(long, value_name = "URL", requires = "store")]
    pub endpoint: Option<String>,
    /// The object store's region (default: AWS_REGION).
    #[cfg(feature = "s3")]
    #[arg(long, requires = "store")]
    pub region: Option<String>,
    /// Admit only clients whose certificate has this name (CN or DNS SAN); repeatable.
    #[arg(long, value_name = "NAME")]
    pub allow: Vec<String>,
    /// Refuse push and rm.
    #[arg(long)]
    pub read_only: bool,
    /// Grant read/write/delete per peer name and path prefix (TOML; see README).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Largest file accepted: bytes, or with a K, M, G or T suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Most connections served at once.
    #[arg(long, default_value_t = server::MAX_CONNS)]
    pub max_conns: usize,
    /// Most connections served at once for one client identity.
    #[arg(long, default_value_t = server::MAX_CONNS_PER_PEER)]
    pub max_conns_per_peer: usize,
    /// Memory the server may use, over all connections, to buffer peers'
    /// small files, offers, read-ahead and, with --store, the parts of
    /// uploads in flight (K, M, G suffixes) [default: 64M; 512M with --store]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Time in-flight transfers get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Deadline for the TLS handshake.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Deadline from the handshake to the client's first request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Longest a transfer may stall (per read or write).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Delete partial copies of interrupted uploads not resumed for this long.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub partial_ttl: Duration,
    /// Bytes of partial copies one client may leave; its oldest go first.
    #[arg(long, value_name = "SIZE", default_value = "16G", value_parser = parse_size)]
    pub partial_quota: u64,
    /// Most bytes a second each way, per connection, e.g. 10M (10 MiB/s).
    #[arg(long, value_name = "RATE", value_parser = super::parse_rate)]
    pub bwlimit: Option<u64>,
    /// Sign certificates for invites (`xfer keygen --invite`) and renewals
    /// (`xfer renew`): needs ca.key and invites.json beside ca.pem.
    #[arg(long)]
    pub enroll: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// The memory budget's default with `--store`: uploads hold their parts in
/// flight (up to 40 MiB each), and each client may take a quarter.
#[cfg(feature = "s3")]
const STORE_MEMORY: u64 = 512 << 20;

/// `xfer serve`.
pub(super) async fn serve(a: ServeArgs, log_format: super::LogFormat) -> anyhow::Result<()> {
    let mut cfg = ServeConfig::new(a.listen, a.root.clone(), a.identity.paths("server", None)?);
    cfg.allow = a.allow;
    cfg.read_only = a.read_only;
    cfg.policy = a.policy;
    cfg.max_size = a.max_size;
    cfg.max_conns = a.max_conns;
    cfg.max_conns_per_peer = a.max_conns_per_peer;
    #[cfg(feature = "s3")]
    if let Some(location) = a.store {
        let access = crate::objects::Access { endpoint: a.endpoint, region: a.region, keys: None };
        cfg.store = Some((location, access));
    }
    #[cfg(feature = "s3")]
    let default_memory = if cfg.store.is_some() { STORE_MEMORY } else { crate::budget::DEFAULT as u64 };
    #[cfg(not(feature = "s3"))]
    let default_memory = crate::budget::DEFAULT as u64;
    cfg.max_memory = usize::try_from(a.max_memory.unwrap_or(default_memory)).unwrap_or(usize::MAX);
    cfg.grace = a.grace;
    cfg.partial_ttl = a.partial_ttl;
    cfg.partial_quota = a.partial_quota;
    cfg.enroll = a.enroll;
    cfg.bwlimit = a.bwlimit;
    let cfg_enroll = a.enroll;
    cfg.timeouts = Timeouts {
        handshake: a.handshake_timeout,
        header: a.header_timeout,
        idle: a.idle_timeout,
        ..Timeouts::default()
    };
    let allow = cfg.allow.clone();
    let read_only = cfg.read_only;
    let server = Server::bind(cfg).await.with_context(|| "cannot start the server".to_owned())?;
    let addr = server.local_addr()?;
    spawn_reload_on_sighup(server.reloader());
    // Scripts wait for this exact line to learn the port, whatever the log
    // level, so it does not go through the logger.
    match log_format {
        super::LogFormat::Text => eprintln!("xfer: listening on {addr}"),
        // One JSON object like every other line, with the address both in
        // the message (for scripts that search it) and as a field.
        super::LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "level": "INFO",
                "message": format!("listening on {addr}"),
                "listening": addr.to_string(),
            })
        ),
    }
    tracing::info!(
        serving = %server.serving(),
        read_only,
        enroll = cfg_enroll,
        allow = %if allow.is_empty() { "any certificate from the CA".to_owned() } else { allow.join(",") },
        "serving"
    );
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// Reloads certificates, key, CA and policy on each SIGHUP; a broken new
/// file is refused with a log line and the running configuration stays.
/// Windows has no SIGHUP: a restart reloads there.
#[cfg(not(unix))]
fn spawn_reload_on_sighup(_: Reloader) {}

#[cfg(unix)]
fn spawn_reload_on_sighup(reloader: Reloader) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("SIGHUP reload unavailable: cannot install the signal handler");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.reload() {
                Ok(()) => tracing::info!("reloaded certificates and policy (SIGHUP)"),
                Err(e) => tracing::warn!("reload refused, the previous configuration stays: {e}"),
            }
        }
    });
}

/// Completes on Ctrl-C (Windows has no SIGTERM).
#[cfg(not(unix))]
pub async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Completes on SIGINT or SIGTERM.
#[cfg(unix)]
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await, // no signal support: never fire
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
