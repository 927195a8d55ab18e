//! xfer moves files between machines over TCP wrapped in mutual TLS 1.3 and
//! verifies every byte end to end with BLAKE3.
//!
//! # Layout
//!
//! - [`protocol`]: the wire format as pure code (frames, validated paths).
//! - [`connection`]: frames over any async byte stream, with phase timeouts.
//! - [`transfer`]: one file's send and receive halves, shared by both sides.
//! - [`store`]: the only code that maps wire paths to files; atomic installs.
//! - [`beneath`]: race-free file access below an open folder, links refused
//!   (Linux's own system calls, or cap-std on macOS, Windows and with the
//!   `portable-io` feature).
//! - [`platform`]: modes, owners and limits, where platforms differ.
//! - [`names`]: names a receiver's filesystem cannot hold (Windows).
//! - [`objects`]: files in an S3-compatible bucket (not yet used by `serve`).
//! - [`direct`]: direct I/O (no page-cache copy) for large received files.
//! - [`hashes`]: BLAKE3 of files already held, cached per version, bounded per peer.
//! - [`walk`]: streaming walks of local trees for senders.
//! - [`tls`]: identities, rustls configs, peer names, readable TLS errors.
//! - [`text`]: untrusted names and messages escaped before they are printed.
//! - [`budget`]: one server-wide memory budget for buffered peer state.
//! - [`auth`]: the policy file: which peer may read, write or delete where.
//! - [`pki`]: `xfer keygen`, a local CA and the peers it signs.
//! - [`enroll`]: invite codes, `xfer enroll` and `xfer renew` (the server's
//!   side is `server::enroll`).
//! - [`throttle`]: `--bwlimit`, a rate-limited byte stream under TLS.
//! - [`client`]: connect and push, pull, list, remove, pipelined.
//! - [`server`]: accept loop, per-connection handlers, graceful shutdown.
//! - [`progress`]: what client commands tell their user (human or JSON).
//! - [`meter`]: live progress bars, fed by events from transfer code.
//! - [`error`]: the error type and the failure classes behind exit codes.
//! - [`cli`]: the command line (clap), turned into the configs above.
//!
//! # Example
//!
//! A server and a client in one program, over real mutual TLS on loopback
//! (`examples/push_pull.rs` is the same, runnable with `cargo run
//! --example push_pull`):
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use xfer::pki::{KeygenConfig, keygen};
//! use xfer::progress::{Op, Output, Reporter};
//! use xfer::{Client, ClientConfig, IdentityPaths, PushPlan, ServeConfig, Server, WirePath};
//!
//! let work = tempfile::tempdir()?;
//! let certs = work.path().join("certs");
//! keygen(&KeygenConfig::pair(certs.clone()))?; // a server and a client certificate
//!
//! // Port 0: the OS picks a free port; local_addr() tells which.
//! let cfg = ServeConfig::new("127.0.0.1:0".parse()?, work.path().join("root"), IdentityPaths::in_dir(&certs, "server"));
//! let server = Server::bind(cfg).await?;
//! let addr = server.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(server.run(async move { let _ = stopped.await; }));
//!
//! std::fs::write(work.path().join("a.txt"), b"hi")?;
//! let plan = PushPlan::new(&[work.path().join("a.txt")], &WirePath::root())?; // checks the sources
//! let mut client = Client::connect(ClientConfig::new(&addr.to_string(), IdentityPaths::in_dir(&certs, "client"))?).await?;
//! let mut report = Reporter::new(Output::Silent, Op::Push);
//! client.push(plan, &mut report).await?;
//! client.close().await?;
//! assert_eq!(report.finish()?.ok, 1);
//! assert_eq!(std::fs::read(work.path().join("root/a.txt"))?, b"hi");
//!
//! let _ = stop.send(());
//! running.await??;
//! # Ok(()) }
//! ```

// No unsafe code of our own: rustix, tokio and the crypto crates hold it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod beneath;
pub mod budget;
pub mod cli;
pub mod client;
pub mod connection;
pub mod direct;
pub mod enroll;
pub mod error;
pub mod hashes;
pub mod links;
pub mod meter;
pub mod names;
#[cfg(feature = "s3")]
pub mod objects;
pub mod partial;
pub mod pki;
pub mod platform;
pub mod progress;
pub mod protocol;
pub mod server;
pub mod store;
pub mod text;
pub mod throttle;
pub mod tls;
pub mod transfer;
pub mod walk;

pub use client::{Client, ClientConfig, PushPlan};
pub use error::{Error, Result};
pub use protocol::WirePath;
pub use server::{ServeConfig, Server};
pub use tls::IdentityPaths;
