//! Frames: the unit of the xfer protocol, and their byte encoding.
//!
//! A frame is `type: u8`, `length: u32` (big endian) and `length` bytes of
//! body. Decoding is split in two, like mini-redis: [`check`] looks at the
//! 5-byte header only, bounds the length per type *before* anything is
//! allocated, and says how many bytes the whole frame needs; [`Frame::parse`]
//! then decodes one complete frame, rejecting trailing bytes. Neither does
//! I/O, so both are unit-tested and fuzzed directly.

use bytes::Bytes;

use super::path::{PathError, WirePath};
use super::{MAX_CONTROL_LEN, MAX_DATA_LEN, MAX_PATH_LEN};

/// Bytes before each frame body: type and length.
pub const HEADER_LEN: usize = 5;

/// Longest text field (reasons, messages), in bytes.
pub const MAX_TEXT_LEN: usize = MAX_CONTROL_LEN / 2;

/// Frame type codes (PROTOCOL.md, "Frames").
mod code {
    pub const FILE: u8 = 0x01;
    pub const DIR: u8 = 0x02;
    pub const SKIPPED: u8 = 0x03;
    pub const PROBE: u8 = 0x04;
    pub const OFFER: u8 = 0x05;
    pub const TOTAL: u8 = 0x06;
    pub const LINK: u8 = 0x07;
    pub const GET: u8 = 0x08;
    pub const LIST: u8 = 0x09;
    pub const REMOVE: u8 = 0x0A;
    pub const FILTER: u8 = 0x0B;
    pub const DATA: u8 = 0x10;
    pub const END: u8 = 0x11;
    pub const ABORT: u8 = 0x12;
    pub const STORED: u8 = 0x20;
    pub const OK: u8 = 0x21;
    pub const ENTRY: u8 = 0x22;
    pub const HAVE: u8 = 0x23;
    pub const ERROR: u8 = 0x2F;
}

/// Modification time: seconds since the Unix epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// What precedes a file's payload, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    pub path: WirePath,
    /// Exact file length, or [`super::UNKNOWN_SIZE`] for a stream.
    pub size: u64,
    /// Where the payload starts: 0, or the length of a prefix the receiver
    /// offered (`Have`, `Offer`) and the sender verified. The trailer's
    /// hash still covers the whole file.
    pub offset: u64,
    /// Unix permission bits of the source (the receiver masks them).
    pub mode: u32,
    pub mtime: Timestamp,
}

impl FileHeader {
    /// A header for a whole file, sent from its first byte.
    pub fn new(path: WirePath, size: u64, mode: u32, mtime: Timestamp) -> FileHeader {
        FileHeader { path, size, offset: 0, mode, mtime }
    }

    /// The payload length, when it is known in advance.
    pub fn known_size(&self) -> Option<u64> {
        (self.size != super::UNKNOWN_SIZE).then_some(self.size)
    }
}

/// What a receiver already holds of a file, offered so the sender can skip
/// it or send only the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Have {
    /// Bytes of a partial copy kept from an interrupted transfer (0: none).
    pub offset: u64,
    /// BLAKE3 of those `offset` bytes.
    pub prefix: [u8; 32],
    /// The BLAKE3 of a complete copy of the same size under the final name.
    pub complete: Option<[u8; 32]>,
}

/// A file the receiver of a pull already holds, in part or whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub path: WirePath,
    /// The file's size and mtime as the sender had them when the copy
    /// began (a partial) or as installed (a complete copy).
    pub size: u64,
    pub mtime: Timestamp,
    /// Bytes held: less than `size` for a partial, `size` for a whole copy.
    pub offset: u64,
    /// BLAKE3 of those bytes.
    pub prefix: [u8; 32],
}

impl Offer {
    /// Length of this offer's frame body, the unit of
    /// [`MAX_OFFER_BYTES`](super::MAX_OFFER_BYTES).
    pub fn body_len(&self) -> usize {
        Offer::body_len_for(&self.path)
    }

    /// Length of the body of an offer for `path`.
    pub fn body_len_for(path: &WirePath) -> usize {
        2 + path.as_str().len() + 8 + 12 + 8 + 32
    }
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub path: WirePath,
    pub size: u64,
    pub mtime: Timestamp,
    pub is_dir: bool,
}

/// Why a request failed, as carried by an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A malformed or unexpected frame; the connection is closed after it.
    Protocol,
    /// The peer speaks another protocol version.
    Version,
    /// The client's certificate is valid but not admitted (`--allow`).
    NotAdmitted,
    /// The operation is not permitted (`--read-only`, reserved names).
    Denied,
    /// The path broke a rule of PROTOCOL.md, "Paths".
    BadPath,
    NotFound,
    /// The path exists with the wrong type (a file where a folder must be...).
    Conflict,
    NoSpace,
    TooLarge,
    /// The payload's BLAKE3 differs from the sender's.
    Integrity,
    /// The sender abandoned the file.
    Aborted,
    /// An I/O error on the server.
    Io,
    ShuttingDown,
    /// The server is at a connection limit (in all, or this identity's
    /// share); retry later.
    Busy,
    /// A code this build does not know; kept so it can be reported.
    Unknown(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::Version => 2,
            ErrorCode::NotAdmitted => 3,
            ErrorCode::Denied => 4,
            ErrorCode::BadPath => 5,
            ErrorCode::NotFound => 6,
            ErrorCode::Conflict => 7,
            ErrorCode::NoSpace => 8,
            ErrorCode::TooLarge => 9,
            ErrorCode::Integrity => 10,
            ErrorCode::Aborted => 11,
            ErrorCode::Io => 12,
            ErrorCode::ShuttingDown => 13,
            ErrorCode::Busy => 14,
            ErrorCode::Unknown(n) => n,
        }
    }

    fn from_u16(n: u16) -> ErrorCode {
        const KNOWN: [ErrorCode; 14] = [
            ErrorCode::Protocol,
            ErrorCode::Version,
            ErrorCode::NotAdmitted,
            ErrorCode::Denied,
            ErrorCode::BadPath,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::NoSpace,
            ErrorCode::TooLarge,
            ErrorCode::Integrity,
            ErrorCode::Aborted,
            ErrorCode::Io,
            ErrorCode::ShuttingDown,
            ErrorCode::Busy,
        ];
        KNOWN.into_iter().find(|c| c.to_u16() == n).unwrap_or(ErrorCode::Unknown(n))
    }
}

/// Every message of the protocol. PROTOCOL.md says who sends which, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    File(FileHeader),
    Dir {
        path: WirePath,
        mode: u32,
        mtime: Timestamp,
    },
    Skipped {
        path: WirePath,
        reason: String,
    },
    /// Before a push's `File`: what does the server hold of this file?
    Probe {
        path: WirePath,
        size: u64,
        mtime: Timestamp,
    },
    /// Before a pull's `Get`: what the client holds.
    Offer(Offer),
    /// A symbolic link, sent as one (`--links`): its path and its target,
    /// relative, as written.
    Link {
        path: WirePath,
        target: String,
    },
    /// Before a pull's `Get`s: gitignore lines the server leaves out of
    /// each answer that follows on this connection.
    Filter {
        patterns: String,
    },
    /// First in a `Get`'s answer, when the server could count it cheaply:
    /// the files (and links, specials) and bytes the answer will carry.
    Total {
        files: u64,
        bytes: u64,
    },
    Get {
        path: WirePath,
    },
    List {
        path: WirePath,
    },
    Remove {
        path: WirePath,
        recursive: bool,
    },
    Data(Bytes),
    End {
        blake3: [u8; 32],
    },
    Abort {
        reason: String,
    },
    Stored {
        size: u64,
        blake3: [u8; 32],
    },
    Ok,
    Entry(ListEntry),
    /// The answer to `Probe`.
    Have(Have),
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("the peer does not speak xfer (bad magic)")]
    BadMagic,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame type 0x{kind:02x} declares {len} bytes, more than its limit of {max}")]
    TooLong { kind: u8, len: usize, max: usize },
    #[error("frame type 0x{0:02x} is truncated")]
    Truncated(u8),
    #[error("frame type 0x{0:02x} has trailing bytes")]
    Trailing(u8),
    #[error("frame type 0x{0:02x} has an invalid field: {1}")]
    Invalid(u8, &'static str),
    /// A well-formed frame whose path breaks a rule. The stream is still in
    /// sync, so a receiver can refuse just this request.
    #[error("refused path '{path}': {error}")]
    BadPath { kind: u8, path: String, error: PathError, wire_len: usize },
}

/// A refused path as quoted in messages: escaped, at most 200 characters.
fn shown(path: &str) -> String {
    let escaped = crate::text::escape(path);
    match escaped.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &escaped[..i]),
        None => escaped.into_owned(),
    }
}

impl FrameError {
    /// True when the frame carried a file header, so its payload follows.
    pub fn is_file_header(&self) -> bool {
        matches!(self, FrameError::BadPath { kind, .. } if *kind == code::FILE)
    }

    /// True when the frame was an `OFFER`, which gets no reply, not even a
    /// refusal.
    pub fn is_offer(&self) -> bool {
        matches!(self, FrameError::BadPath { kind, .. } if *kind == code::OFFER)
    }

    /// For a refused path, its length on the wire.
    pub fn path_len(&self) -> usize {
        match self {
            FrameError::BadPath { wire_len, .. } => *wire_len,
            _ => 0,
        }
    }

    /// True when the frame was a `PROBE`, which a `HAVE` would answer.
    pub fn is_probe(&self) -> bool {
        matches!(self, FrameError::BadPath { kind, .. } if *kind == code::PROBE)
    }
}

/// Largest body a frame of type `kind` may declare.
fn max_body(kind: u8) -> Option<usize> {
    match kind {
        code::DATA => Some(MAX_DATA_LEN),
        code::FILE..=code::LINK
        | code::GET..=code::FILTER
        | code::END
        | code::ABORT
        | code::STORED
        | code::OK
        | code::ENTRY
        | code::HAVE
        | code::ERROR => Some(MAX_CONTROL_LEN),
        _ => None,
    }
}

/// Looks at the header at the start of `src`: `Ok(None)` if more bytes are
/// needed, the whole frame's length once it is all there, or an error for an
/// unknown type or a length over that type's limit.
pub fn check(src: &[u8]) -> Result<Option<usize>, FrameError> {
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = src[0];
    let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
    let max = max_body(kind).ok_or(FrameError::UnknownType(kind))?;
    if len > max {
        return Err(FrameError::TooLong { kind, len, max });
    }
    let total = HEADER_LEN + len;
    Ok((src.len() >= total).then_some(total))
}

/// True when `buf` starts with a `Probe` frame (whole or not), so a
/// receiver can gather consecutive probes and answer them together.
pub fn starts_with_probe(buf: &[u8]) -> bool {
    buf.first() == Some(&code::PROBE)
}

/// Appends the header of a `Data` frame carrying `len` bytes, for senders
/// that write the payload themselves instead of building a `Frame::Data`.
pub fn encode_data_header(len: usize, dst: &mut Vec<u8>) {
    debug_assert!(len <= MAX_DATA_LEN);
    dst.push(code::DATA);
    dst.extend_from_slice(&(len as u32).to_be_bytes());
}

impl Frame {
    /// Decodes the frame at the start of `src`, copying its body: the
    /// convenience form of [`check`] + [`Frame::parse`] for tests and fuzzing.
    pub fn decode(src: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        match check(src)? {
            None => Ok(None),
            Some(n) => Ok(Some((Frame::parse(Bytes::copy_from_slice(&src[..n]))?, n))),
        }
    }

    /// Parses one complete frame (as measured by [`check`]). `Data` bodies
    /// are sliced out of `frame` without copying.
    pub fn parse(frame: Bytes) -> Result<Frame, FrameError> {
        let kind = frame[0];
        let body = frame.slice(HEADER_LEN..);
        if kind == code::DATA {
            if body.is_empty() {
                return Err(FrameError::Invalid(kind, "empty data frame"));
            }
            return Ok(Frame::Data(body));
        }
        let mut r = Reader { buf: &body, kind };
        let frame = match kind {
            code::FILE => {
                let h = FileHeader {
                    path: r.path()?,
                    size: r.u64()?,
                    offset: r.u64()?,
                    mode: r.u32()?,
                    mtime: r.timestamp()?,
                };
                if h.offset > 0 && h.known_size().is_none_or(|s| h.offset > s) {
                    return Err(FrameError::Invalid(kind, "offset beyond the file's size"));
                }
                Frame::File(h)
            }
            code::DIR => Frame::Dir { path: r.path()?, mode: r.u32()?, mtime: r.timestamp()? },
            code::SKIPPED => Frame::Skipped { path: r.path()?, reason: r.string()? },
            code::PROBE => Frame::Probe { path: r.path()?, size: r.u64()?, mtime: r.timestamp()? },
            code::OFFER => {
                let o = Offer {
                    path: r.path()?,
                    size: r.u64()?,
                    mtime: r.timestamp()?,
                    offset: r.u64()?,
                    prefix: r.hash()?,
                };
                if o.offset > o.size || o.size == super::UNKNOWN_SIZE {
                    return Err(FrameError::Invalid(kind, "offset beyond the file's size"));
                }
                Frame::Offer(o)
            }
            code::LINK => Frame::Link { path: r.path()?, target: r.string()? },
            code::FILTER => Frame::Filter { patterns: r.string()? },
            code::TOTAL => Frame::Total { files: r.u64()?, bytes: r.u64()? },
            code::GET => Frame::Get { path: r.path()? },
            code::LIST => Frame::List { path: r.path()? },
            code::REMOVE => Frame::Remove { path: r.path()?, recursive: r.bool()? },
            code::END => Frame::End { blake3: r.hash()? },
            code::ABORT => Frame::Abort { reason: r.string()? },
            code::STORED => Frame::Stored { size: r.u64()?, blake3: r.hash()? },
            code::OK => Frame::Ok,
            code::ENTRY => {
                Frame::Entry(ListEntry { path: r.path()?, size: r.u64()?, mtime: r.timestamp()?, is_dir: r.bool()? })
            }
            code::HAVE => {
                let (offset, prefix) = (r.u64()?, r.hash()?);
                let (complete, blake3) = (r.bool()?, r.hash()?);
                if !complete && blake3 != [0; 32] {
                    return Err(FrameError::Invalid(kind, "a hash without a complete copy"));
                }
                Frame::Have(Have { offset, prefix, complete: complete.then_some(blake3) })
            }
            code::ERROR => Frame::Error { code: ErrorCode::from_u16(r.u16()?), message: r.string()? },
            other => return Err(FrameError::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(FrameError::Trailing(kind));
        }
        Ok(frame)
    }

    /// Appends this frame's encoding to `dst`.
    pub fn encode(&self, dst: &mut Vec<u8>) {
        let start = dst.len();
        dst.extend_from_slice(&[self.code(), 0, 0, 0, 0]);
        let mut w = Writer(dst);
        match self {
            Frame::File(h) => {
                w.path(&h.path);
                w.u64(h.size);
                w.u64(h.offset);
                w.u32(h.mode);
                w.timestamp(h.mtime);
            }
            Frame::Dir { path, mode, mtime } => {
                w.path(path);
                w.u32(*mode);
                w.timestamp(*mtime);
            }
            Frame::Skipped { path, reason } => {
                w.path(path);
                w.string(reason);
            }
            Frame::Probe { path, size, mtime } => {
                w.path(path);
                w.u64(*size);
                w.timestamp(*mtime);
            }
            Frame::Offer(o) => {
                w.path(&o.path);
                w.u64(o.size);
                w.timestamp(o.mtime);
                w.u64(o.offset);
                w.0.extend_from_slice(&o.prefix);
            }
            Frame::Link { path, target } => {
                w.path(path);
                w.string(target);
            }
            Frame::Filter { patterns } => w.string(patterns),
            Frame::Total { files, bytes } => {
                w.u64(*files);
                w.u64(*bytes);
            }
            Frame::Get { path } | Frame::List { path } => w.path(path),
            Frame::Remove { path, recursive } => {
                w.path(path);
                w.0.push(u8::from(*recursive));
            }
            Frame::Data(b) => w.0.extend_from_slice(b),
            Frame::End { blake3 } => w.0.extend_from_slice(blake3),
            Frame::Abort { reason } => w.string(reason),
            Frame::Stored { size, blake3 } => {
                w.u64(*size);
                w.0.extend_from_slice(blake3);
            }
            Frame::Ok => {}
            Frame::Entry(e) => {
                w.path(&e.path);
                w.u64(e.size);
                w.timestamp(e.mtime);
                w.0.push(u8::from(e.is_dir));
            }
            Frame::Have(h) => {
                w.u64(h.offset);
                w.0.extend_from_slice(&h.prefix);
                w.0.push(u8::from(h.complete.is_some()));
                w.0.extend_from_slice(&h.complete.unwrap_or_default());
            }
            Frame::Error { code, message } => {
                w.u16(code.to_u16());
                w.string(message);
            }
        }
        let len = (dst.len() - start - HEADER_LEN) as u32;
        dst[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    fn code(&self) -> u8 {
        match self {
            Frame::File(_) => code::FILE,
            Frame::Dir { .. } => code::DIR,
            Frame::Skipped { .. } => code::SKIPPED,
            Frame::Probe { .. } => code::PROBE,
            Frame::Offer(_) => code::OFFER,
            Frame::Total { .. } => code::TOTAL,
            Frame::Filter { .. } => code::FILTER,
            Frame::Link { .. } => code::LINK,
            Frame::Get { .. } => code::GET,
            Frame::List { .. } => code::LIST,
            Frame::Remove { .. } => code::REMOVE,
            Frame::Data(_) => code::DATA,
            Frame::End { .. } => code::END,
            Frame::Abort { .. } => code::ABORT,
            Frame::Stored { .. } => code::STORED,
            Frame::Ok => code::OK,
            Frame::Entry(_) => code::ENTRY,
            Frame::Have(_) => code::HAVE,
            Frame::Error { .. } => code::ERROR,
        }
    }

    /// A short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::File(_) => "FILE",
            Frame::Dir { .. } => "DIR",
            Frame::Skipped { .. } => "SKIPPED",
            Frame::Probe { .. } => "PROBE",
            Frame::Offer(_) => "OFFER",
            Frame::Total { .. } => "TOTAL",
            Frame::Filter { .. } => "FILTER",
            Frame::Link { .. } => "LINK",
            Frame::Get { .. } => "GET",
            Frame::List { .. } => "LIST",
            Frame::Remove { .. } => "REMOVE",
            Frame::Data(_) => "DATA",
            Frame::End { .. } => "END",
            Frame::Abort { .. } => "ABORT",
            Frame::Stored { .. } => "STORED",
            Frame::Ok => "OK",
            Frame::Entry(_) => "ENTRY",
            Frame::Have(_) => "HAVE",
            Frame::Error { .. } => "ERROR",
        }
    }
}

/// Cursor over a frame body; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated(self.kind));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        Ok(self.take(N)?.try_into().expect("length checked by take"))
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.array::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FrameError::Invalid(self.kind, "boolean is neither 0 nor 1")),
        }
    }
    fn hash(&mut self) -> Result<[u8; 32], FrameError> {
        self.array()
    }
    fn timestamp(&mut self) -> Result<Timestamp, FrameError> {
        let secs = i64::from_be_bytes(self.array()?);
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(FrameError::Invalid(self.kind, "nanoseconds out of range"));
        }
        Ok(Timestamp { secs, nanos })
    }
    fn bytes16(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let b = self.bytes16()?;
        // The same bound the encoder applies, so decoding then encoding
        // gives back the same bytes.
        if b.len() > MAX_TEXT_LEN {
            return Err(FrameError::Invalid(self.kind, "text longer than 8192 bytes"));
        }
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| FrameError::Invalid(self.kind, "text is not UTF-8"))
    }
    fn path(&mut self) -> Result<WirePath, FrameError> {
        let b = self.bytes16()?;
        WirePath::parse_bytes(b).map_err(|error| FrameError::BadPath {
            kind: self.kind,
            // Quoted in replies and logs: escaped, since it broke the rules,
            // and cut short (a whole hostile path need not be repeated).
            path: shown(&String::from_utf8_lossy(&b[..b.len().min(MAX_PATH_LEN)])),
            error,
            wire_len: b.len(),
        })
    }
}

/// Appends big-endian fields to a frame body.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn timestamp(&mut self, t: Timestamp) {
        self.0.extend_from_slice(&t.secs.to_be_bytes());
        self.u32(t.nanos);
    }
    fn bytes16(&mut self, b: &[u8]) {
        // Paths are at most 4096 bytes; messages are cut to MAX_TEXT_LEN.
        let b = &b[..b.len().min(MAX_TEXT_LEN)];
        self.u16(b.len() as u16);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, s: &str) {
        let mut end = s.len().min(MAX_TEXT_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes16(&s.as_bytes()[..end]);
    }
    fn path(&mut self, p: &WirePath) {
        self.bytes16(p.as_str().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> WirePath {
        WirePath::parse(s).unwrap()
    }

    fn samples() -> Vec<Frame> {
        let t = Timestamp { secs: 1_700_000_000, nanos: 123_456_789 };
        vec![
            Frame::File(FileHeader::new(p("a/b.txt"), 42, 0o755, t)),
            Frame::File(FileHeader { offset: 40, ..FileHeader::new(p("a/b.txt"), 42, 0o755, t) }),
            Frame::File(FileHeader::new(p("s"), super::super::UNKNOWN_SIZE, 0, Timestamp { secs: -5, nanos: 0 })),
            Frame::Probe { path: p("a/b.txt"), size: 42, mtime: t },
            Frame::Offer(Offer { path: p("d/f"), size: 10, mtime: t, offset: 4, prefix: [3; 32] }),
            Frame::Have(Have::default()),
            Frame::Have(Have { offset: 7, prefix: [4; 32], complete: Some([5; 32]) }),
            Frame::Dir { path: p("d/e"), mode: 0o700, mtime: t },
            Frame::Skipped { path: p("link"), reason: "symbolic link".into() },
            Frame::Total { files: 20_000, bytes: 1 << 40 },
            Frame::Link { path: p("d/l"), target: "../e/f".into() },
            Frame::Filter { patterns: "*.map\nnode_modules/\n!keep.map".into() },
            Frame::Get { path: p("x") },
            Frame::List { path: WirePath::root() },
            Frame::Remove { path: p("x/y"), recursive: true },
            Frame::Data(Bytes::from_static(b"payload")),
            Frame::End { blake3: [7; 32] },
            Frame::Abort { reason: "source changed".into() },
            Frame::Stored { size: 9, blake3: [1; 32] },
            Frame::Ok,
            Frame::Entry(ListEntry { path: p("f"), size: 3, mtime: t, is_dir: false }),
            Frame::Error { code: ErrorCode::NotFound, message: "no such file: x".into() },
            Frame::Error { code: ErrorCode::Unknown(999), message: String::new() },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            let (back, used) = Frame::decode(&buf).unwrap().unwrap();
            assert_eq!(back, f);
            assert_eq!(used, buf.len());
            if let Frame::Offer(o) = &f {
                assert_eq!(o.body_len(), buf.len() - HEADER_LEN);
            }
            // Every strict prefix asks for more bytes rather than failing.
            for cut in 0..buf.len() {
                assert_eq!(Frame::decode(&buf[..cut]), Ok(None), "{} cut at {cut}", f.name());
            }
        }
    }

    #[test]
    fn back_to_back_frames_decode_in_order() {
        let mut buf = Vec::new();
        for f in samples() {
            f.encode(&mut buf);
        }
        let mut at = 0;
        for want in samples() {
            let (got, n) = Frame::decode(&buf[at..]).unwrap().unwrap();
            assert_eq!(got, want);
            at += n;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let huge = [code::FILE, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(check(&huge), Err(FrameError::TooLong { .. })));
        let big_data = [code::DATA, 0x00, 0x10, 0x00, 0x01];
        assert!(matches!(check(&big_data), Err(FrameError::TooLong { .. })));
        assert_eq!(check(&[0x7f, 0, 0, 0, 0]), Err(FrameError::UnknownType(0x7f)));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        // OK with a trailing byte.
        assert_eq!(Frame::decode(&[code::OK, 0, 0, 0, 1, 9]), Err(FrameError::Trailing(code::OK)));
        // END with a short hash.
        assert_eq!(Frame::decode(&[code::END, 0, 0, 0, 2, 1, 2]), Err(FrameError::Truncated(code::END)));
        // Empty DATA.
        assert!(matches!(Frame::decode(&[code::DATA, 0, 0, 0, 0]), Err(FrameError::Invalid(..))));
        // REMOVE with a boolean of 2.
        assert!(matches!(Frame::decode(&[code::REMOVE, 0, 0, 0, 4, 0, 1, b'x', 2]), Err(FrameError::Invalid(..))));
    }

    #[test]
    fn long_messages_are_cut_on_encode_and_refused_on_decode() {
        let long = "é".repeat(MAX_TEXT_LEN);
        let mut buf = Vec::new();
        Frame::Abort { reason: long }.encode(&mut buf);
        let Some((Frame::Abort { reason }, _)) = Frame::decode(&buf).unwrap() else { panic!() };
        assert!(reason.len() <= MAX_TEXT_LEN && reason.chars().all(|c| c == 'é'));
        let mut raw = vec![code::ABORT, 0, 0, 0x23, 0x02, 0x23, 0x00];
        raw.extend(std::iter::repeat_n(b'a', 0x2300));
        assert!(matches!(Frame::decode(&raw), Err(FrameError::Invalid(..))));
    }

    #[test]
    fn hostile_paths_are_reported_with_their_frame_type() {
        let mut buf = vec![code::FILE, 0, 0, 0, 0];
        let path = b"../etc/passwd";
        buf.extend_from_slice(&(path.len() as u16).to_be_bytes());
        buf.extend_from_slice(path);
        buf.extend_from_slice(&[0; 8 + 8 + 4 + 12]);
        let len = (buf.len() - HEADER_LEN) as u32;
        buf[1..5].copy_from_slice(&len.to_be_bytes());
        let err = Frame::decode(&buf).unwrap_err();
        assert!(err.is_file_header());
        assert!(matches!(err, FrameError::BadPath { error: PathError::ParentComponent, .. }));
    }

    /// The worked example of PROTOCOL.md, section 9, byte for byte.
    #[test]
    fn protocol_md_example_is_exact() {
        let h = FileHeader::new(p("a/b.txt"), 3, 0o644, Timestamp { secs: 1_700_000_000, nanos: 0 });
        let mut buf = Vec::new();
        Frame::File(h).encode(&mut buf);
        let want: &[u8] = &[
            0x01, 0, 0, 0, 0x29, 0, 7, b'a', b'/', b'b', b'.', b't', b'x', b't', 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 1, 0xa4, 0, 0, 0, 0, 0x65, 0x53, 0xf1, 0, 0, 0, 0, 0,
        ];
        assert_eq!(buf, want);
        buf.clear();
        Frame::Probe { path: p("a/b.txt"), size: 3, mtime: Timestamp { secs: 1_700_000_000, nanos: 0 } }
            .encode(&mut buf);
        assert_eq!(&buf[..5], &[0x04, 0, 0, 0, 0x1d]);
        assert_eq!(buf.len(), 5 + 0x1d);
        buf.clear();
        Frame::Have(Have::default()).encode(&mut buf);
        assert_eq!(&buf[..5], &[0x23, 0, 0, 0, 0x49]);
        assert!(buf[5..].iter().all(|&b| b == 0));
        buf.clear();
        Frame::Stored { size: 3, blake3: [9; 32] }.encode(&mut buf);
        assert_eq!(&buf[..13], &[0x20, 0, 0, 0, 0x28, 0, 0, 0, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn offsets_past_the_size_are_refused() {
        let t = Timestamp::default();
        for f in [
            Frame::File(FileHeader { offset: 5, ..FileHeader::new(p("f"), 4, 0, t) }),
            Frame::File(FileHeader { offset: 1, ..FileHeader::new(p("f"), super::super::UNKNOWN_SIZE, 0, t) }),
            Frame::Offer(Offer { path: p("f"), size: 4, mtime: t, offset: 5, prefix: [0; 32] }),
        ] {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            assert!(matches!(Frame::decode(&buf), Err(FrameError::Invalid(..))), "{f:?}");
        }
    }

    #[test]
    fn data_header_matches_frame_encoding() {
        let mut a = Vec::new();
        encode_data_header(3, &mut a);
        a.extend_from_slice(b"abc");
        let mut b = Vec::new();
        Frame::Data(Bytes::from_static(b"abc")).encode(&mut b);
        assert_eq!(a, b);
    }
}
