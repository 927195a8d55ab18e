//! Moving one file over a framed stream, in either direction.
//!
//! `send` turns a local file into `File`, `Data`… and `End` (or `Abort`);
//! `receive` turns those frames into a staged file, hashing as it writes,
//! and commits it only when the sender's BLAKE3 matches. Client and server
//! share both halves: a push is the client sending, a pull is the server.

mod receive;
mod send;

pub use receive::{
    Destination, FileOutcome, Received, WriterSink, discard_payload, receive_deferred, receive_file, receive_into,
};
pub use send::{SendOutcome, Sent, next_item, send_file, send_stream, spawn_walk, stdin_chunks};

/// Lower-case hex of a BLAKE3 hash, as `b3sum` prints it.
pub fn hex(hash: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}
