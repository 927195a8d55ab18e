//! One test binary for everything that runs the real `xfer` over real TLS
//! on loopback. One module per topic.
//!
//! Unix only: the tests signal servers (SIGHUP, SIGKILL), check modes and
//! make links. Windows builds run their unit tests under Wine instead, and
//! `scripts/wine-check.sh` moves files between `xfer.exe` and a Linux server.
#![cfg(unix)]

mod support;

mod ci_recipe;
mod codec_props;
mod enroll;
mod habits;
mod hints;
mod hostile;
mod identities;
mod keygen;
mod kill_loop;
mod limits;
mod links;
mod load;
#[cfg(feature = "s3")]
mod objects;
mod paths;
mod policy;
mod protocol;
mod resume;
mod revocation;
mod roles;
mod server;
#[cfg(feature = "s3")]
mod store_serve;
mod streams;
mod tools;
mod transfer;
mod trust;
