//! Enrollment: a machine joins with a one-time invite code, its private key
//! never leaving it, and renews its certificate later under the current one.
//!
//! - [`code`]: invite codes and the proof bound to one TLS connection;
//! - [`invites`]: the invites file on the CA's machine;
//! - [`tls`]: the TLS configs of the exchange (a pinned CA on the client,
//!   optional client certificates of either role on the server);
//! - [`client`]: `xfer enroll` and `xfer renew`.
//!
//! The server's side is `server::enroll`; the messages are
//! [`crate::protocol::enroll`].

pub mod client;
pub mod code;
pub mod invites;
pub mod tls;
