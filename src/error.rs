//! The crate's one error type, grouped by the class of failure a user (or a
//! CI job) must tell apart. [`Class::exit_code`] is the one place that
//! turns a class into an exit code.

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
    /// Stopped by Ctrl-C (SIGINT) or SIGTERM.
    Interrupted,
}

impl Class {
    /// The exit code of this class (README.md, "Exit codes"); the one
    /// place exit codes are defined.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Other => 1,
            Class::Usage => 2,
            Class::Connection => 3,
            Class::Refused => 4,
            Class::Integrity => 5,
            Class::Interrupted => 130,
        }
    }

    /// A lower-case name, for JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Class::Other => "other",
            Class::Usage => "usage",
            Class::Connection => "connection",
            Class::Refused => "refused",
            Class::Integrity => "integrity",
            Class::Interrupted => "interrupted",
        }
    }
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
    /// Something answered at that address, but not an xfer server.
    #[error("the server at {addr} does not speak xfer ({why})")]
    NotXfer { addr: String, why: &'static str },
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
            | Error::NotXfer { .. }
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
            Error::Identity { .. } | Error::Protocol { .. } | Error::Frame { .. } | Error::Io { .. } => Class::Other,
            Error::Interrupted => Class::Interrupted,
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
