//! xfer moves files between machines over TCP wrapped in mutual TLS 1.3 and
//! verifies every byte end to end with BLAKE3.
//!
//! # Layout
//!
//! - [`protocol`]: the wire format as pure code (frames, validated paths).
//! - [`connection`]: frames over any async byte stream, with phase timeouts.
//! - [`transfer`]: one file's send and receive halves, shared by both sides.
//! - [`store`]: the only code that maps wire paths to files; atomic installs.
//! - [`beneath`]: race-free file access below an open folder, links refused.
//! - [`walk`]: streaming walks of local trees for senders.
//! - [`tls`]: identities, rustls configs, peer names, readable TLS errors.
//! - [`pki`]: `xfer keygen`, a local CA and the peers it signs.
//! - [`client`]: connect and push, pull, list, remove, pipelined.
//! - [`server`]: accept loop, per-connection handlers, graceful shutdown.
//! - [`progress`]: what client commands tell their user (human or JSON).
//! - [`error`]: the error type and the failure classes behind exit codes.
//! - [`cli`]: the command line (clap), turned into the configs above.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> xfer::error::Result<()> {
//! use xfer::{Client, ClientConfig, IdentityPaths, PushPlan, WirePath};
//! use xfer::progress::{Op, Output, Reporter};
//!
//! let plan = PushPlan::new(&["dist".into()], &WirePath::root())?; // checks the sources
//! let ids = IdentityPaths::in_dir("certs".as_ref(), "client");
//! let mut client = Client::connect(ClientConfig::new("127.0.0.1:5001", ids)?).await?;
//! let mut rep = Reporter::new(Output::Silent, Op::Push);
//! client.push(plan, &mut rep).await?;
//! client.close().await?;
//! rep.finish()?;
//! # Ok(()) }
//! ```

pub mod beneath;
pub mod cli;
pub mod client;
pub mod connection;
pub mod error;
pub mod pki;
pub mod progress;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod walk;

pub use client::{Client, ClientConfig, PushPlan};
pub use error::{Error, Result};
pub use protocol::WirePath;
pub use server::{ServeConfig, Server};
pub use tls::IdentityPaths;
