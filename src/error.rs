//! The crate's one error type, grouped by the class of failure a user (or a
//! CI job) must tell apart. `main.rs` turns a [`Class`] into an exit code;
//! nothing else knows exit codes.

use std::io;
use std::time::Duration;

use crate::protocol::{ErrorCode, FrameError, PathError};

/// What kind of failure an [`Error`] is; each maps to one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Anything else (local I/O, protocol violations by the peer).
    Other,
    /// The command line asked for something impossible.
    Usage,
    /// Could not connect, TLS failed, or the peer was not admitted.
    Connection,
    /// The server refused the request (permission, path, space).
    Refused,
    /// A payload's BLAKE3 did not match.
    Integrity,
}

/// Every failure xfer reports. Messages are lower-case, name the file, peer
/// or path involved, and say what to do next when that is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS with {peer} failed: {message}")]
    Tls { peer: String, message: String },
    #[error("{phase} timed out after {}s", after.as_secs_f32())]
    Timeout { phase: &'static str, after: Duration },
    #[error("connection to {peer} lost: {source}")]
    ConnectionLost { peer: String, source: io::Error },
    #[error(
        "{peer} speaks xfer protocol version {theirs}, this build speaks {ours}: install matching versions on both sides"
    )]
    Version { peer: String, ours: u16, theirs: u16 },
    #[error("the server did not admit this client: {0}")]
    NotAdmitted(String),
    /// The server is at a connection limit (server side: answered `BUSY`).
    #[error("{0}")]
    Busy(String),

    /// Enrollment or renewal refused (the message says why and what next).
    #[error("{0}")]
    Enrollment(String),

    #[error("cannot load {what}: {message}")]
    Identity { what: String, message: String },

    /// `message` names the path (the client makes sure of it).
    #[error("{message}")]
    Refused { path: String, code: ErrorCode, message: String },
    #[error("refused remote path '{path}': {error}")]
    BadPath { path: String, error: PathError },

    #[error(
        "{path}: BLAKE3 mismatch: the sender had {expected}, the receiver got {actual}; the destination was left untouched"
    )]
    Integrity { path: String, expected: String, actual: String },

    #[error("protocol error from {peer}: {message}")]
    Protocol { peer: String, message: String },
    #[error("bad frame from {peer}: {error}")]
    Frame { peer: String, error: FrameError },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(
        "interrupted: no file was left half-written under its name; run the command again to finish (large files resume)"
    )]
    Interrupted,
    #[error("{failed} of {total} items failed")]
    Failed { failed: usize, total: usize, class: Class },
}

impl Error {
    /// The class that decides the exit code.
    pub fn class(&self) -> Class {
        match self {
            Error::Usage(_) => Class::Usage,
            Error::Connect { .. }
            | Error::Tls { .. }
            | Error::Timeout { .. }
            | Error::ConnectionLost { .. }
            | Error::Version { .. }
            | Error::NotAdmitted(_)
            | Error::Enrollment(_)
            | Error::Busy(_) => Class::Connection,
            Error::Refused { code, .. } => match code {
                ErrorCode::NotAdmitted | ErrorCode::Version | ErrorCode::ShuttingDown | ErrorCode::Busy => {
                    Class::Connection
                }
                ErrorCode::Integrity => Class::Integrity,
                ErrorCode::Protocol | ErrorCode::Io | ErrorCode::Aborted | ErrorCode::Unknown(_) => Class::Other,
                _ => Class::Refused,
            },
            Error::BadPath { .. } => Class::Refused,
            Error::Integrity { .. } => Class::Integrity,
            Error::Identity { .. }
            | Error::Protocol { .. }
            | Error::Frame { .. }
            | Error::Io { .. }
            | Error::Interrupted => Class::Other,
            Error::Failed { class, .. } => *class,
        }
    }

    /// True for failures another attempt may not meet: the connection was
    /// refused, cut or stalled, or the server was shutting down. Never for
    /// authentication, refusals or integrity failures.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::ConnectionLost { source, .. } => crate::tls::rustls_error(source).is_none(),
            Error::Refused { code, .. } => matches!(code, ErrorCode::ShuttingDown | ErrorCode::Busy),
            _ => false,
        }
    }

    /// Wraps a local I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// A frame the peer sent that could not be decoded or was unexpected.
    /// Escaped: such messages often quote what the peer sent.
    pub fn protocol(peer: &str, message: impl std::fmt::Display) -> Error {
        Error::Protocol { peer: peer.to_owned(), message: crate::text::escape(&message.to_string()).into_owned() }
    }
}

/// Short form for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
