//! The server: binds, accepts, hands each connection to its own task, and
//! shuts down cooperatively.
//!
//! [`Server::run`] takes a shutdown future, so `main` (signals) and tests
//! (a oneshot) share one code path. On shutdown the listener stops, every
//! handler is told through a [`CancellationToken`] and finishes the file it
//! is on, and the [`TaskTracker`] is awaited under the grace period; files
//! still unfinished after that are dropped from staging, never installed.

mod handler;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::connection::Timeouts;
use crate::error::{Error, Result};
use crate::store::Root;
use crate::tls::{Identity, IdentityPaths};

/// Default most connections served at once.
pub const MAX_CONNS: usize = 256;
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
    /// Largest file accepted, in bytes.
    pub max_size: Option<u64>,
    pub identity: IdentityPaths,
    pub timeouts: Timeouts,
    pub max_conns: usize,
    pub grace: Duration,
}

impl ServeConfig {
    /// Defaults for everything but where to listen, serve and who to be.
    pub fn new(listen: SocketAddr, root: PathBuf, identity: IdentityPaths) -> ServeConfig {
        ServeConfig {
            listen,
            root,
            allow: Vec::new(),
            read_only: false,
            max_size: None,
            identity,
            timeouts: Timeouts::default(),
            max_conns: MAX_CONNS,
            grace: GRACE,
        }
    }
}

/// State every connection handler shares (read-only).
struct Shared {
    acceptor: TlsAcceptor,
    root: Root,
    allow: Vec<String>,
    read_only: bool,
    max_size: Option<u64>,
    timeouts: Timeouts,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    max_conns: usize,
    grace: Duration,
}

impl Server {
    /// Loads the identity, opens the root and binds the listener.
    pub async fn bind(cfg: ServeConfig) -> Result<Server> {
        let identity = Identity::load(&cfg.identity)?;
        let acceptor = TlsAcceptor::from(identity.server_config()?);
        let root = Root::open_server(&cfg.root)
            .map_err(|e| Error::io(format!("cannot use {} as the root", cfg.root.display()), e))?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", cfg.listen), e))?;
        let shared = Shared {
            acceptor,
            root,
            allow: cfg.allow,
            read_only: cfg.read_only,
            max_size: cfg.max_size,
            timeouts: cfg.timeouts,
        };
        Ok(Server { listener, shared: Arc::new(shared), max_conns: cfg.max_conns.max(1), grace: cfg.grace })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| Error::io("cannot read the bound address", e))
    }

    /// The root folder being served (canonical).
    pub fn root(&self) -> &std::path::Path {
        self.shared.root.dir()
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.max_conns));
        tokio::pin!(shutdown);
        loop {
            // Wait for a free slot first, so a flood of connections queues
            // in the kernel's backlog instead of in our memory.
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
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
            let shared = self.shared.clone();
            let token = token.child_token();
            tracker.spawn(async move {
                handler::serve(tcp, addr, shared, token).await;
                drop(permit);
            });
        }
        drop(self.listener);
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
