//! The server: binds, accepts, hands each connection to its own task, and
//! shuts down cooperatively.
//!
//! [`Server::run`] takes a shutdown future, so `main` (signals) and tests
//! (a oneshot) share one code path. On shutdown the listener stops, every
//! handler is told through a [`CancellationToken`] and finishes the file it
//! is on, and the [`TaskTracker`] is awaited under the grace period; files
//! still unfinished after that are dropped from staging, never installed.

mod enroll;
mod gate;
mod handler;
mod storage;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use self::gate::{Handshakes, Slots};
use self::storage::Storage;
use crate::auth::Policy;
use crate::budget::Budget;
use crate::connection::Timeouts;
use crate::enroll::invites::Invites;
use crate::error::{Error, Result};
use crate::pki::Ca;
use crate::store::Root;
use crate::tls::{Identity, IdentityPaths, Pem};

/// Default most connections served at once.
pub const MAX_CONNS: usize = 256;
/// Default most connections served at once for one identity.
pub const MAX_CONNS_PER_PEER: usize = 16;
pub use gate::{MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS};
/// Default deadline for a client's TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time in-flight transfers get to finish after SIGINT/SIGTERM.
pub const GRACE: Duration = Duration::from_secs(10);

/// Everything `xfer serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub root: PathBuf,
    /// Client names admitted (CN or DNS SAN); empty = any the CA signed.
    pub allow: Vec<String>,
    /// Refuse writes and removals.
    pub read_only: bool,
    /// A policy file granting read/write/delete per peer and prefix.
    pub policy: Option<PathBuf>,
    /// Largest file accepted, in bytes.
    pub max_size: Option<u64>,
    pub identity: IdentityPaths,
    pub timeouts: Timeouts,
    pub max_conns: usize,
    /// Sessions one identity may hold at once.
    pub max_conns_per_peer: usize,
    /// Bytes of peer state (held small files, offers, read-ahead) the
    /// whole server may buffer.
    pub max_memory: usize,
    pub grace: Duration,
    /// Partial copies nobody resumed for this long are deleted.
    pub partial_ttl: Duration,
    /// Bytes of partial copies one client may leave.
    pub partial_quota: u64,
    /// Sign certificates for invites and renewals (`--enroll`): needs the
    /// CA's key and invites file beside the CA certificate.
    pub enroll: bool,
    /// Most bytes a second each way, per connection (`--bwlimit`).
    pub bwlimit: Option<u64>,
    /// Keep files in this bucket instead of under `root` (`--store`).
    #[cfg(feature = "s3")]
    pub store: Option<(crate::objects::Location, crate::objects::Access)>,
}

impl ServeConfig {
    /// Defaults for everything but where to listen, serve and who to be.
    pub fn new(listen: SocketAddr, root: PathBuf, identity: IdentityPaths) -> ServeConfig {
        ServeConfig {
            listen,
            root,
            allow: Vec::new(),
            read_only: false,
            policy: None,
            max_size: None,
            identity,
            // Unauthenticated peers hold a handshake place this long at most.
            timeouts: Timeouts { handshake: HANDSHAKE_TIMEOUT, ..Timeouts::default() },
            max_conns: MAX_CONNS,
            max_conns_per_peer: MAX_CONNS_PER_PEER,
            max_memory: crate::budget::DEFAULT,
            grace: GRACE,
            partial_ttl: crate::partial::DEFAULT_TTL,
            partial_quota: crate::partial::DEFAULT_QUOTA,
            enroll: false,
            bwlimit: None,
            #[cfg(feature = "s3")]
            store: None,
        }
    }
}

/// State every connection handler shares.
struct Shared {
    /// What SIGHUP reloads, swapped whole: new connections get the new
    /// one, open sessions switch to it at their next request.
    live: RwLock<Arc<Live>>,
    /// Where `live` is loaded from.
    identity: IdentityPaths,
    policy_path: Option<PathBuf>,
    storage: Storage,
    allow: Vec<String>,
    read_only: bool,
    max_size: Option<u64>,
    timeouts: Timeouts,
    /// Sessions being served, in all and per identity.
    slots: Arc<Slots>,
    /// Memory for buffered peer state, shared by every connection.
    budget: Budget,
    /// Each client identity's share of `budget`, while it is connected.
    peer_budgets: std::sync::Mutex<std::collections::HashMap<String, Budget>>,
    /// The folder of the CA's certificate, key and invites (`--enroll`).
    enroll_dir: Option<PathBuf>,
    /// Failed enrollment attempts, per source address.
    failures: enroll::Failures,
    /// Renewals, per certificate name.
    renewals: enroll::Renewals,
    /// Most bytes a second each way, per connection.
    bwlimit: Option<u64>,
}

/// The reloadable part of the configuration. Sessions re-read it for every
/// request, so a narrower policy or a new CRL applies to open connections
/// too.
struct Live {
    /// TLS for transfers (ALPN `xfer/1`).
    config: Arc<rustls::ServerConfig>,
    /// Enrollment (ALPN `xfer-enroll/1`), with `--enroll` only.
    enroll: Option<Arc<EnrollLive>>,
    /// Re-checks an open session's client certificate after a reload.
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    policy: Option<Policy>,
}

/// What enrollment needs, reloaded with the rest.
struct EnrollLive {
    config: Arc<rustls::ServerConfig>,
    ca: Ca,
    invites: Invites,
}

impl Shared {
    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads certificates, policy and CA; on any error the running
    /// configuration stays.
    fn reload(&self) -> Result<()> {
        let live = load_live(&self.identity, self.policy_path.as_deref(), self.enroll_dir.as_deref())?;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        Ok(())
    }

    /// Client `peer`'s share of the memory budget: a quarter of it, so no
    /// one identity (with all its connections) can hold it all.
    fn budget_for(&self, peer: &str) -> Budget {
        let mut shares = self.peer_budgets.lock().unwrap_or_else(|e| e.into_inner());
        let limit = (self.budget.limit() / 4).max(1 << 20);
        shares.entry(peer.to_owned()).or_insert_with(|| self.budget.share(limit)).clone()
    }

    /// Forgets `peer`'s share once none of its connections holds it.
    fn release_budget(&self, peer: &str) {
        let mut shares = self.peer_budgets.lock().unwrap_or_else(|e| e.into_inner());
        if shares.get(peer).is_some_and(|b| b.holders() == 0) {
            shares.remove(peer);
        }
    }
}

/// Loads certificate, key, CA and policy (and, for enrollment, the CA's
/// key); all or nothing.
fn load_live(identity: &IdentityPaths, policy: Option<&Path>, enroll_dir: Option<&Path>) -> Result<Live> {
    let identity = Identity::load(identity)?;
    identity.check_valid_now()?;
    let config = identity.server_config()?;
    let verifier = identity.client_verifier()?;
    let policy = policy.map(Policy::load).transpose()?;
    let enroll = enroll_dir.map(|dir| load_enroll(&identity, dir)).transpose()?.map(Arc::new);
    Ok(Live { config, enroll, verifier, policy })
}

/// The CA and invites `--enroll` signs with, refused with the fix when
/// either is missing.
fn load_enroll(identity: &Identity, dir: &Path) -> Result<EnrollLive> {
    let key = dir.join("ca.key");
    if !key.exists() {
        return Err(Error::Identity {
            what: key.display().to_string(),
            message: "it does not exist, and --enroll signs certificates with the CA's key: \
                      run `xfer serve --enroll` on the machine that ran `xfer keygen`, with --certs pointing at its folder"
                .into(),
        });
    }
    let invites = Invites::in_dir(dir);
    if !invites.exists() {
        return Err(Error::Identity {
            what: invites.path().display().to_string(),
            message: format!(
                "it does not exist yet, and --enroll answers the invites recorded there: \
                 create one first with `xfer keygen --invite NAME --dir {}`",
                dir.display()
            ),
        });
    }
    let ca = Ca::load(dir)?;
    let config = crate::enroll::tls::server_config(identity, ca.certs())?;
    Ok(EnrollLive { config, ca, invites })
}

/// The folder of the CA files, for `--enroll`: beside the CA certificate,
/// which must then be a file.
fn enroll_dir(identity: &IdentityPaths) -> Result<PathBuf> {
    match &identity.ca {
        Pem::File(p) => Ok(p.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)),
        Pem::Env { var, .. } => Err(Error::Usage(format!(
            "--enroll needs the CA's files (ca.pem, ca.key, invites.json in one folder), not ${var}: \
             pass --certs DIR"
        ))),
    }
}

/// Reloads a running server's certificates and policy (on SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Re-reads everything; on any error the running configuration stays
    /// and the error says what was wrong with the new files.
    pub fn reload(&self) -> Result<()> {
        self.shared.reload()
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    grace: Duration,
    partial_ttl: Duration,
}

impl Server {
    /// Loads the identity, opens the root and binds the listener.
    pub async fn bind(cfg: ServeConfig) -> Result<Server> {
        let enroll_dir = cfg.enroll.then(|| enroll_dir(&cfg.identity)).transpose()?;
        let live = load_live(&cfg.identity, cfg.policy.as_deref(), enroll_dir.as_deref())?;
        let storage = open_storage(&cfg).await?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", cfg.listen), e))?;
        let shared = Shared {
            live: RwLock::new(Arc::new(live)),
            identity: cfg.identity,
            policy_path: cfg.policy,
            storage,
            allow: cfg.allow,
            read_only: cfg.read_only,
            max_size: cfg.max_size,
            timeouts: cfg.timeouts,
            slots: Slots::new(cfg.max_conns, cfg.max_conns_per_peer),
            budget: Budget::new(cfg.max_memory),
            peer_budgets: Default::default(),
            enroll_dir,
            failures: Default::default(),
            renewals: Default::default(),
            bwlimit: cfg.bwlimit,
        };
        Ok(Server { listener, shared: Arc::new(shared), grace: cfg.grace, partial_ttl: cfg.partial_ttl })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| Error::io("cannot read the bound address", e))
    }

    /// A handle that reloads certificates and policy while serving.
    pub fn reloader(&self) -> Reloader {
        Reloader { shared: self.shared.clone() }
    }

    /// What is served: the root folder (canonical), or the bucket.
    pub fn serving(&self) -> String {
        self.shared.storage.describe()
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handshakes = Handshakes::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS);
        let expiry = tokio::spawn(expire_partials(self.shared.clone(), self.partial_ttl));
        tokio::pin!(shutdown);
        loop {
            // Every connection is accepted at once and its handshake bounded
            // by the gate, which drops the oldest unfinished handshakes when
            // full: idle sockets cannot queue real clients out.
            let (tcp, addr) = tokio::select! {
                _ = &mut shutdown => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Usually EMFILE: back off rather than spin.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (ticket, evicted) = handshakes.enter(addr.ip());
            if evicted > 0 {
                tracing::debug!(%addr, "too many handshakes in progress: dropped the oldest");
            }
            let shared = self.shared.clone();
            let token = token.child_token();
            tracker.spawn(handler::serve(tcp, addr, shared, token, ticket));
        }
        drop(self.listener);
        expiry.abort();
        token.cancel();
        tracker.close();
        if !tracker.is_empty() {
            info!("shutting down: waiting up to {}s for {} connection(s)", self.grace.as_secs(), tracker.len());
        }
        if tokio::time::timeout(self.grace, tracker.wait()).await.is_err() {
            warn!(
                "grace period over: dropping {} connection(s); their unfinished files stay out of place",
                tracker.len()
            );
        }
        info!("stopped");
        Ok(())
    }
}

/// Opens the root folder, or checks the bucket: a store that is down or
/// refuses stops the server at start, said plainly.
async fn open_storage(cfg: &ServeConfig) -> Result<Storage> {
    #[cfg(feature = "s3")]
    if let Some((location, access)) = &cfg.store {
        let bucket = crate::objects::Bucket::open(location.clone(), access).map_err(|e| Error::Usage(e.message))?;
        bucket.check().await.map_err(|e| Error::Usage(e.message))?;
        return Ok(Storage::Objects(bucket));
    }
    let mut root = Root::open_server(&cfg.root)
        .map_err(|e| Error::io(format!("cannot use {} as the root", cfg.root.display()), e))?;
    root.set_partial_quota(cfg.partial_quota);
    Ok(Storage::Local(root))
}

/// Deletes partial copies older than `ttl` (a bucket's partial uploads are
/// aborted): now, then every quarter of `ttl` (at least every second, at
/// most every hour).
async fn expire_partials(shared: Arc<Shared>, ttl: Duration) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let removed = match &shared.storage {
            Storage::Local(root) => {
                let root = root.clone();
                crate::transfer::blocking(move || match root.partial_dir() {
                    Ok(dir) => crate::partial::expire(&dir, ttl),
                    Err(_) => 0,
                })
                .await
            }
            #[cfg(feature = "s3")]
            Storage::Objects(b) => b.expire_partials(ttl).await,
        };
        if removed > 0 {
            info!(removed, "deleted partial copies older than {}s", ttl.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}
