//! Direct I/O for the bulk of large received files.
//!
//! A buffered write copies every byte into the page cache, and the group
//! commit then waits for all of it to reach the disk: on a receiver that
//! copy is the largest single cost of a big transfer (the kernel's
//! `copy_folio_from_iter_atomic` took a third of all CPU in a profile of a
//! 2 GiB push). Writes that are whole, aligned blocks from an aligned buffer
//! go straight to the device with `O_DIRECT` instead: no copy, and the data
//! is on its way to stable storage while the next block arrives.
//!
//! Anything else (a file's unaligned tail, a resumed file's first bytes, a
//! filesystem without direct I/O such as an older tmpfs) is written
//! buffered, on the same descriptor, with `O_DIRECT` switched off by
//! `fcntl`. Durability never depends on which path a byte took: the commit
//! still syncs the file system (or the file) before anything is reported.

use std::fs::File;
use std::io::{self, Write};

/// Alignment of offsets, lengths and memory for direct writes: the page
/// size, which covers every logical block size in common use.
pub const ALIGN: usize = 4096;

/// Writes shorter than this go through the page cache: for a few blocks the
/// cost of the switch is more than the copy it saves.
const DIRECT_MIN: usize = 64 * 1024;

/// A byte buffer whose start is aligned to [`ALIGN`], for direct writes.
/// Safe code only: a `Vec` with `ALIGN` spare bytes, used from its first
/// aligned address.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
    /// How much this round of filling may hold (at most the allocation,
    /// which is `raw.len() - ALIGN`).
    cap: usize,
}

impl AlignedBuf {
    /// An empty buffer that holds up to `cap` bytes.
    pub fn with_capacity(cap: usize) -> AlignedBuf {
        let raw = vec![0u8; cap + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, start, len: 0, cap }
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub fn fill_from(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.cap - self.len);
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    pub fn is_full(&self) -> bool {
        self.len == self.cap
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the buffer and lets it hold `limit` bytes this time (at
    /// most what it was allocated with).
    pub fn reset(&mut self, limit: usize) {
        self.len = 0;
        self.cap = limit.min(self.raw.len() - ALIGN);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// Whether a file's descriptor may use direct I/O, as learnt by trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Not tried yet, or `O_DIRECT` is currently off.
    #[default]
    Buffered,
    /// `O_DIRECT` is on.
    Direct,
    /// The file system refused it: buffered for good.
    Unsupported,
}

/// Appends `data` to `file`, whose size is `pos`: directly when the write
/// is aligned and large enough, otherwise through the page cache.
pub fn append(file: &mut File, pos: u64, data: &[u8], mode: &mut Mode) -> io::Result<()> {
    let aligned = pos.is_multiple_of(ALIGN as u64)
        && data.len().is_multiple_of(ALIGN)
        && data.len() >= DIRECT_MIN
        && (data.as_ptr() as usize).is_multiple_of(ALIGN);
    if aligned && *mode == Mode::Buffered {
        *mode = if set_direct(file, true).is_ok() { Mode::Direct } else { Mode::Unsupported };
    }
    if aligned && *mode == Mode::Direct {
        match write_direct(file, data) {
            Ok(()) => return Ok(()),
            // EINVAL: this file system (or device) wants another alignment,
            // or the remainder of a short write is no longer aligned. Go
            // buffered for the rest, and for good if this write could not
            // even start (the file system will not take direct writes).
            Err((done, e)) if e.kind() == io::ErrorKind::InvalidInput => {
                set_direct(file, false)?;
                *mode = if done == 0 { Mode::Unsupported } else { Mode::Buffered };
                return file.write_all(&data[done..]);
            }
            Err((_, e)) => return Err(e),
        }
    }
    if *mode == Mode::Direct {
        set_direct(file, false)?;
        *mode = Mode::Buffered;
    }
    file.write_all(data)
}

/// Writes all of `data` with `O_DIRECT` on; on failure, says how many bytes
/// went out before it.
fn write_direct(file: &mut File, data: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < data.len() {
        match file.write(&data[done..]) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// Switches `O_DIRECT` on or off: Linux only, and not with `portable-io`
/// (elsewhere every write is buffered: `F_NOCACHE` on macOS and
/// unbuffered handles on Windows do not take a flag on an open file the
/// same way, and the copy is not where time goes there yet).
#[cfg(all(target_os = "linux", not(feature = "portable-io")))]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
    rustix::fs::fcntl_setfl(file, flags)?;
    Ok(())
}

#[cfg(any(not(target_os = "linux"), feature = "portable-io"))]
fn set_direct(_: &File, on: bool) -> io::Result<()> {
    match on {
        true => Err(io::ErrorKind::Unsupported.into()),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn aligned_buffers_start_aligned_and_fill_to_capacity() {
        let mut b = AlignedBuf::with_capacity(3 * ALIGN);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.fill_from(&[7; 2 * ALIGN]), 2 * ALIGN);
        assert_eq!(b.fill_from(&[8; 2 * ALIGN]), ALIGN);
        assert!(b.is_full());
        assert_eq!(&b.as_slice()[2 * ALIGN..], &[8; ALIGN][..]);
        b.reset(usize::MAX);
        assert!(b.is_empty());
        assert_eq!(b.fill_from(&[9; 4 * ALIGN]), 3 * ALIGN, "a reset never grows past the allocation");
        b.reset(ALIGN);
        assert_eq!(b.fill_from(&[9; 2 * ALIGN]), ALIGN, "nor past the limit given");
    }

    /// Mixed aligned blocks, an unaligned middle and a tail: the file holds
    /// exactly the bytes in order, whichever path each write took.
    #[test]
    fn mixed_direct_and_buffered_appends_keep_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::options().write(true).create_new(true).open(&path).unwrap();
        let mut mode = Mode::default();
        let mut expected = Vec::new();
        let mut pos = 0u64;
        let mut buf = AlignedBuf::with_capacity(DIRECT_MIN * 2);
        for (i, len) in [DIRECT_MIN * 2, 100, DIRECT_MIN * 2, DIRECT_MIN, 4097].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
            let mut at = 0;
            while at < data.len() {
                buf.reset(usize::MAX);
                let n = buf.fill_from(&data[at..]);
                append(&mut file, pos, buf.as_slice(), &mut mode).unwrap();
                pos += n as u64;
                at += n;
            }
            expected.extend_from_slice(&data);
            if i == 0 {
                // An aligned block at an aligned offset is always tried
                // directly: it went direct, or the file system said no.
                assert_ne!(mode, Mode::Buffered, "the first aligned block was not tried with O_DIRECT");
            }
        }
        drop(file);
        let mut got = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "file content differs from what was appended");
    }
}
