//! Moving one file over a framed stream, in either direction.
//!
//! `send` turns a local file into `File`, `Data`… and `End` (or `Abort`);
//! `receive` turns those frames into a staged file, hashing as it writes,
//! and commits it only when the sender's BLAKE3 matches. Client and server
//! share both halves: a push is the client sending, a pull is the server.

mod disk;
mod receive;
mod send;

pub use disk::Target;

pub use receive::{
    Destination, FileOutcome, MAX_DRAIN, Received, WriterSink, discard_payload, receive_deferred, receive_file,
    receive_into,
};
pub use send::{Held, SendOutcome, Sent, next_item, send_file, send_stream, spawn_walk, stdin_chunks};

/// Runs blocking filesystem work on tokio's blocking threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking filesystem task panicked")
}

/// Lower-case hex of a BLAKE3 hash, as `b3sum` prints it.
pub fn hex(hash: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}
