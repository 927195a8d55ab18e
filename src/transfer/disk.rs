//! The disk end of a receive: payload bytes gathered into large aligned
//! blocks and written by a background thread, so the network, the hash and
//! the disk overlap instead of taking turns.
//!
//! The receive loop fills one block while the thread writes the previous
//! one (direct I/O where possible, see [`crate::direct`]); at most
//! [`BLOCKS`] blocks exist per file, so memory stays bounded whatever the
//! file size. A small file fits in one block and never starts a thread: it
//! is written by one blocking call when it ends. Write errors come back with
//! the blocks, so they surface at the next block or at the end, and the
//! caller keeps reading the payload to stay in sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::direct::{ALIGN, AlignedBuf};
use crate::protocol::FileHeader;
use crate::store::{Near, StageFn, Staged, StoreError, Unwritten, Verified};

use super::blocking;

/// Bytes per block: large enough for the device to stream, small enough
/// that many connections at once stay within the server's memory budget.
pub const BLOCK_LEN: usize = 512 * 1024;

/// Verified files up to this size wait for their group commit in memory;
/// larger ones are written when they end.
const IN_MEMORY_MAX: usize = 64 * 1024;

/// Blocks per file: one filling while one is written.
const BLOCKS: usize = 2;

type Written = (AlignedBuf, Result<(), StoreError>);

/// Where the payload goes: a file staged already, or one to stage when the
/// payload is complete. A small file staged late costs no blocking call of
/// its own: the group commit stages and writes it with the others.
pub enum Target {
    Ready(Staged),
    Later(StageFn, Option<Near>),
}

impl Target {
    /// Stages a file of `size` bytes with `stage` (given `near`, the folder
    /// of the file before it): now, or for a file that fits one block,
    /// once its payload has arrived.
    pub async fn new(
        size: Option<u64>,
        near: Option<Near>,
        stage: impl FnOnce(Option<Near>) -> Result<Staged, StoreError> + Send + 'static,
    ) -> Result<Target, StoreError> {
        match size {
            Some(s) if s <= BLOCK_LEN as u64 => Ok(Target::Later(Box::new(stage), near)),
            _ => blocking(move || stage(near)).await.map(Target::Ready),
        }
    }

    fn resolve(self) -> Result<Staged, StoreError> {
        match self {
            Target::Ready(staged) => Ok(staged),
            Target::Later(stage, near) => stage(near),
        }
    }
}

/// A staged file being written, with the block being filled.
pub struct DiskWriter {
    /// The file, until a background writer takes it.
    target: Option<Target>,
    /// The block being filled (`None` between a hand-off and the next fill).
    block: Option<AlignedBuf>,
    block_len: usize,
    /// Blocks allocated so far (at most [`BLOCKS`]).
    blocks: usize,
    /// Where the next block starts in the file, to keep blocks aligned
    /// after a resumed, unaligned prefix.
    pos: u64,
    background: Option<Background>,
}

/// The thread writing full blocks, and the channels to and from it.
struct Background {
    to_disk: mpsc::Sender<AlignedBuf>,
    back: mpsc::Receiver<Written>,
    /// Set before the channel closes when the file is abandoned for good.
    discarded: Arc<AtomicBool>,
    /// The file comes back when the writer is done, unless discarded.
    task: JoinHandle<Option<Staged>>,
}

impl DiskWriter {
    /// Writes into `target`, which holds `pos` bytes already, and whose
    /// final size is `size` when known.
    pub fn new(target: Target, pos: u64, size: Option<u64>) -> DiskWriter {
        // A small file's block is its size (rounded to the alignment), so
        // 4 KiB files do not cost a whole block each.
        let block_len = size.map_or(BLOCK_LEN, |s| (s as usize).next_multiple_of(ALIGN).clamp(ALIGN, BLOCK_LEN));
        DiskWriter { target: Some(target), block: None, block_len, blocks: 0, pos, background: None }
    }

    /// Takes the next payload bytes.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            // A full block goes to the writer only once more data comes: the
            // last block stays for `finish`, so a file of one block never
            // starts a writer thread.
            if self.block.as_ref().is_some_and(AlignedBuf::is_full) {
                let full = self.block.take().expect("a full block");
                self.pos += full.as_slice().len() as u64;
                self.hand_off(full).await?;
            }
            let block = match self.block.as_mut() {
                Some(b) => b,
                None => {
                    let b = self.free_block().await?;
                    self.block.insert(b)
                }
            };
            let n = block.fill_from(data);
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes what is left, then hands the file to `then` on a blocking
    /// thread (for a small file, in the same call that stages and writes it).
    pub async fn finish<T: Send + 'static>(
        mut self,
        then: impl FnOnce(Staged) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let last = self.block.take().filter(|b| !b.is_empty());
        let Some(mut bg) = self.background.take() else {
            let target = self.target.take().expect("no writer took the file");
            return blocking(move || {
                let mut staged = target.resolve()?;
                if let Some(b) = last {
                    staged.write_all(b.as_slice())?;
                }
                then(staged)
            })
            .await;
        };
        if let Some(b) = last {
            let _ = bg.to_disk.send(b).await;
        }
        drop(bg.to_disk);
        let mut result = Ok(());
        // The writer drops its end of `back` when it exits: this drains every
        // block's result, and the first error wins.
        while let Some((_, r)) = bg.back.recv().await {
            result = result.and(r);
        }
        let staged = bg.task.await.expect("disk writer panicked");
        result?;
        let staged = staged.ok_or_else(writer_gone)?;
        blocking(move || then(staged)).await
    }

    /// Like [`finish`](Self::finish) for a file that waits for a group
    /// commit: prepared with the header's mode and mtime and closed, or,
    /// for a small file staged late (at most [`IN_MEMORY_MAX`] bytes), kept
    /// in memory for the commit to write.
    pub async fn finish_verified(mut self, h: &FileHeader) -> Result<Verified, StoreError> {
        let (mode, mtime) = (h.mode, h.mtime);
        let small = self.block.as_ref().is_none_or(|b| b.as_slice().len() <= IN_MEMORY_MAX);
        if small {
            // Only a file not staged yet (so never written) can stay in memory.
            match self.target.take() {
                Some(Target::Later(stage, _)) => {
                    // Copied to its exact size: a group may hold a thousand.
                    let data = self.block.take().map(|b| b.as_slice().to_vec()).unwrap_or_default();
                    return Ok(Verified::Unwritten(Unwritten { path: h.path.clone(), stage, data, mode, mtime }));
                }
                other => self.target = other,
            }
        }
        self.finish(move |mut staged| {
            staged.prepare(mode, mtime)?;
            staged.close();
            Ok(Verified::Staged(staged))
        })
        .await
    }

    /// Abandons the file for good: even a partial copy is deleted.
    pub fn discard(mut self) {
        if let Some(Target::Ready(staged)) = self.target.take() {
            staged.discard();
        }
        if let Some(bg) = self.background.take() {
            // The writer sees the flag once the channel closes (below, when
            // `bg` drops), after the blocks already queued.
            bg.discarded.store(true, Ordering::SeqCst);
        }
    }

    /// A block to fill: a new one while fewer than [`BLOCKS`] exist,
    /// otherwise the next one the writer is done with.
    async fn free_block(&mut self) -> Result<AlignedBuf, StoreError> {
        // A block that ends on an aligned offset keeps the next ones aligned.
        let limit = self.block_len - (self.pos % ALIGN as u64) as usize;
        if self.blocks < BLOCKS {
            self.blocks += 1;
            let mut b = AlignedBuf::with_capacity(self.block_len);
            b.reset(limit);
            return Ok(b);
        }
        let bg = self.background.as_mut().expect("blocks in use means a writer exists");
        let (mut b, r) = bg.back.recv().await.ok_or_else(writer_gone)?;
        r?;
        b.reset(limit);
        Ok(b)
    }

    /// Sends a full block to the writer thread, starting it the first time.
    async fn hand_off(&mut self, full: AlignedBuf) -> Result<(), StoreError> {
        let bg = match self.background.as_mut() {
            Some(bg) => bg,
            None => {
                let target = self.target.take().expect("the file is here until the writer starts");
                let staged = blocking(move || target.resolve()).await?;
                self.background.insert(Background::start(staged))
            }
        };
        bg.to_disk.send(full).await.map_err(|_| writer_gone())
    }
}

impl Background {
    fn start(staged: Staged) -> Background {
        let (to_disk, mut from_net) = mpsc::channel::<AlignedBuf>(BLOCKS);
        let (done, back) = mpsc::channel::<Written>(BLOCKS);
        let discarded = Arc::new(AtomicBool::new(false));
        let flag = discarded.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut file = Some(staged);
            while let Some(b) = from_net.blocking_recv() {
                // After a failure, blocks only travel back (the caller is
                // draining the payload to stay in sync).
                let r = file.as_mut().map_or(Ok(()), |f| f.write_all(b.as_slice()));
                if r.is_err() {
                    // The file is lost: free its space now (a full disk is
                    // the usual cause), not when the caller hears of it.
                    if let Some(f) = file.take() {
                        f.discard();
                    }
                }
                if done.blocking_send((b, r)).is_err() {
                    break; // the receive was dropped: the connection failed
                }
            }
            if flag.load(Ordering::SeqCst)
                && let Some(f) = file.take()
            {
                f.discard();
            }
            file
        });
        Background { to_disk, back, discarded, task }
    }
}

fn writer_gone() -> StoreError {
    StoreError::io(&"the received file", std::io::Error::other("its disk writer stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Timestamp, WirePath};
    use crate::store::{Resume, Root};

    fn root() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        let root = Root::open_server(&t.path().join("root")).unwrap();
        (t, root)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    /// Several blocks and a tail, in pieces that straddle block edges: the
    /// background writer is used, and the file holds every byte in order.
    #[tokio::test]
    async fn a_multi_block_file_arrives_whole_through_the_writer_thread() {
        let (_t, root) = root();
        let data = pattern(3 * BLOCK_LEN + 12345);
        let path = WirePath::parse("d/big").unwrap();
        let staged = root.stage(&path, Some(data.len() as u64), None, Resume::No).unwrap();
        let mut disk = DiskWriter::new(Target::Ready(staged), 0, Some(data.len() as u64));
        for piece in data.chunks(100_003) {
            disk.write(piece).await.unwrap();
        }
        assert!(disk.background.is_some(), "a file of several blocks is written in the background");
        disk.finish(|s| s.commit(0o644, Timestamp::default())).await.unwrap();
        assert!(std::fs::read(root.dir().join("d/big")).unwrap() == data, "content differs");
        assert_eq!(std::fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0);
    }

    /// A one-block file waits, unstaged, until it ends.
    #[tokio::test]
    async fn a_small_file_is_staged_only_when_it_ends() {
        let (_t, root) = root();
        let data = pattern(5000);
        let (r, path) = (root.clone(), WirePath::parse("small").unwrap());
        let size = Some(data.len() as u64);
        let target = Target::new(size, None, move |near| r.stage(&path, size, near, Resume::No)).await.unwrap();
        let mut disk = DiskWriter::new(target, 0, size);
        disk.write(&data).await.unwrap();
        assert!(disk.background.is_none());
        assert_eq!(std::fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0, "nothing staged yet");
        let h = crate::protocol::FileHeader::new(WirePath::parse("small").unwrap(), 5000, 0o600, Timestamp::default());
        let Verified::Unwritten(u) = disk.finish_verified(&h).await.unwrap() else { panic!("kept in memory") };
        assert_eq!(u.data, data);
    }

    /// Abandoning a file mid-way deletes what the writer thread wrote.
    #[tokio::test]
    async fn a_discarded_file_leaves_nothing_behind() {
        let (_t, root) = root();
        let path = WirePath::parse("gone").unwrap();
        let size = 4 * BLOCK_LEN as u64;
        let staged = root.stage(&path, Some(size), None, Resume::No).unwrap();
        let mut disk = DiskWriter::new(Target::Ready(staged), 0, Some(size));
        disk.write(&pattern(2 * BLOCK_LEN + 1)).await.unwrap();
        let tmp = root.dir().join(".xfer/tmp");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1, "the file being written is staged");
        disk.discard();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(&tmp).unwrap().count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the temporary file was never deleted");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!root.dir().join("gone").exists());
    }
}
