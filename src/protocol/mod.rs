//! The xfer wire protocol, as pure code: no sockets, no files, no tokio.
//!
//! `frame` turns bytes into [`Frame`]s and back; `path` validates the relative
//! paths carried inside them. Everything that touches I/O (`connection`,
//! `transfer`, `store`) builds on these types. PROTOCOL.md is the normative
//! description; the constants below are the numbers it quotes.

pub mod enroll;
pub mod frame;
pub mod path;

pub use frame::{ErrorCode, FileHeader, Frame, FrameError, Have, ListEntry, Offer, Timestamp};
pub use path::{PathError, WirePath};

/// First four bytes each side sends after the TLS handshake.
pub const MAGIC: [u8; 4] = *b"XFER";

/// The protocol version this build speaks. Bumped on any incompatible change.
pub const VERSION: u16 = 3;

/// Length of the preamble: magic followed by a big-endian `u16` version.
pub const PREAMBLE_LEN: usize = 6;

/// TCP port used when HOST carries none.
pub const DEFAULT_PORT: u16 = 5001;

/// ALPN protocol id both sides require, so a TLS client for another protocol
/// (an HTTPS client, say) fails during the handshake instead of later.
pub const ALPN: &[u8] = b"xfer/1";

/// Longest path on the wire, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest single path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;

/// Largest body of any frame other than `Data`.
pub const MAX_CONTROL_LEN: usize = 16 * 1024;

/// Largest body of a `Data` frame.
pub const MAX_DATA_LEN: usize = 1024 * 1024;

/// Payload bytes a sender puts in one `Data` frame.
pub const CHUNK_LEN: usize = 256 * 1024;

/// Most `OFFER` frames a client may send on one connection.
pub const MAX_OFFERS: usize = 65_536;

/// Most bytes of `OFFER` bodies a client may send on one connection.
pub const MAX_OFFER_BYTES: usize = 8 << 20;

/// `FileHeader::size` of a stream whose length is not known in advance.
pub const UNKNOWN_SIZE: u64 = u64::MAX;

/// Encodes the preamble this build sends.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let v = VERSION.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1]]
}

/// Checks a received preamble and returns the peer's protocol version.
///
/// A wrong magic means the peer does not speak xfer at all; a different
/// version is returned as is, and the caller decides what to say.
pub fn parse_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<u16, FrameError> {
    if bytes[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    Ok(u16::from_be_bytes([bytes[4], bytes[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips() {
        assert_eq!(parse_preamble(&preamble()).unwrap(), VERSION);
    }

    #[test]
    fn preamble_with_other_magic_is_refused() {
        assert_eq!(parse_preamble(b"GET / ").unwrap_err(), FrameError::BadMagic);
    }
}
