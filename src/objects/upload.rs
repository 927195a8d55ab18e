//! A file being received into a bucket: parts filled and sent while the
//! next arrive, each hashed as a BLAKE3 subtree, completed only once the
//! size and BLAKE3 match (see the module above).

use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload};
use tokio::task::JoinSet;

use super::{Bucket, partial, store_error, tree};
use crate::partial::PartialId;
use crate::protocol::{ErrorCode, WirePath};
use crate::store::StoreError;

/// A file being received into the bucket.
pub struct Upload {
    /// A random tag in the upload's metadata, which its BLAKE3 record names.
    pub(super) tag: String,
    /// Keep its state in the bucket, as this partial upload.
    pub(super) partial: Option<PartialId>,
    /// The BLAKE3 of the first part alone.
    pub(super) first: Option<[u8; 32]>,
    /// Parts recorded in the saved state.
    pub(super) saved: usize,
    pub(super) bucket: Bucket,
    pub(super) key: Key,
    pub(super) path: WirePath,
    pub(super) attributes: Attributes,
    /// The multipart upload, once the file outgrew one part.
    pub(super) multipart: Option<String>,
    /// The part being filled.
    pub(super) filling: Vec<u8>,
    /// Finished parts, by index.
    pub(super) parts: Vec<Option<PartId>>,
    /// Each sent part's BLAKE3 chaining value, by index ([`tree`]).
    pub(super) cvs: Vec<blake3::hazmat::ChainingValue>,
    pub(super) in_flight: JoinSet<(usize, object_store::Result<PartId>)>,
    /// Parts in flight at most: the memory the upload takes is this many
    /// parts plus the one filling.
    pub(super) max_in_flight: usize,
    /// Bytes per part ([`super::part_for`] the file's size).
    pub(super) part: usize,
    pub(super) size: u64,
    /// A write or a part failed: the upload can only be aborted.
    pub(super) poisoned: bool,
}

impl Upload {
    /// Sizes the parts for a file of `size` bytes (more than 10,000 parts
    /// of the default size need larger ones). Before the first write only.
    pub fn sized_for(mut self, size: u64) -> Upload {
        if self.parts.is_empty() && self.filling.is_empty() {
            self.part = super::part_for(size);
        }
        self
    }

    /// Parts of `len` bytes, a power of two at least [`super::PART`]
    /// (tests: [`Upload::sized_for`] picks larger parts only past 78 GiB).
    #[doc(hidden)]
    pub fn with_part_len(mut self, len: usize) -> Upload {
        assert!(len.is_power_of_two() && len >= super::PART && self.parts.is_empty() && self.filling.is_empty());
        self.part = len;
        self
    }

    /// Keeps at most `n` parts (at least one) in flight, to fit the memory
    /// the caller could set aside for this upload.
    pub fn with_parts_in_flight(mut self, n: usize) -> Upload {
        self.max_in_flight = n.max(1);
        self
    }

    /// Appends payload bytes; full parts go out while the next fill. A
    /// full part waits for one more byte, so that a file of one part is a
    /// single `PUT` and a multipart file has at least two parts.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let r = self.append(data).await;
        self.poisoned |= r.is_err();
        r
    }

    async fn append(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::new(ErrorCode::Io, format!("{}: written after a failure", self.path)));
        }
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.filling.len() == self.part {
                self.send_part().await?;
            }
            let n = data.len().min(self.part - self.filling.len());
            self.filling.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    /// Sends the filled part, waiting first while too many are in flight.
    async fn send_part(&mut self) -> Result<(), StoreError> {
        let id = match &self.multipart {
            Some(id) => id.clone(),
            None => {
                let opts = PutMultipartOptions { attributes: self.attributes.clone(), ..Default::default() };
                let id = self.bucket.store.create_multipart_opts(&self.key, opts).await;
                let id = id.map_err(|e| store_error(&self.path, &e))?;
                self.multipart = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= self.max_in_flight {
            self.collect_one().await?;
        }
        let index = self.parts.len();
        self.parts.push(None);
        // Hashing a part is CPU work: off the async workers.
        let data = bytes::Bytes::from(std::mem::take(&mut self.filling));
        let (part, len) = (data.clone(), self.part as u64);
        let (cv, first) = tokio::task::spawn_blocking(move || {
            (tree::part_cv(index as u64 * len, &part), (index == 0).then(|| *blake3::hash(&part).as_bytes()))
        })
        .await
        .map_err(|e| StoreError::new(ErrorCode::Io, format!("{}: {e}", self.path)))?;
        self.cvs.push(cv);
        self.first = self.first.or(first);
        let data = PutPayload::from(data);
        let (store, key) = (self.bucket.store.clone(), self.key.clone());
        self.in_flight.spawn(async move { (index, store.put_part(&key, &id, index, data).await) });
        self.collect_ready().await
    }

    /// Records the parts that finished meanwhile, without waiting.
    async fn collect_ready(&mut self) -> Result<(), StoreError> {
        while let Some(joined) = self.in_flight.try_join_next() {
            let (index, part) = joined.map_err(|e| StoreError::new(ErrorCode::Io, format!("{}: {e}", self.path)))?;
            self.parts[index] = Some(part.map_err(|e| store_error(&self.path, &e))?);
        }
        self.save_state().await;
        Ok(())
    }

    /// The sender went away: the parts in flight are let finish and kept,
    /// so that a later attempt (through any server) resumes after them. An
    /// upload whose state could not be recorded (a stream of unknown size,
    /// a failed save) could never be resumed nor expired: it is aborted.
    pub async fn suspend(mut self) {
        while !self.in_flight.is_empty() {
            if self.collect_one().await.is_err() {
                break;
            }
        }
        if self.partial.is_none() || self.saved == 0 {
            // Not ours to remove: the state under this name, if any, is
            // another attempt's.
            self.partial = None;
            self.abort().await;
        }
    }

    async fn collect_one(&mut self) -> Result<(), StoreError> {
        let Some(joined) = self.in_flight.join_next().await else { return Ok(()) };
        let (index, part) = joined.map_err(|e| StoreError::new(ErrorCode::Io, format!("{}: {e}", self.path)))?;
        self.parts[index] = Some(part.map_err(|e| store_error(&self.path, &e))?);
        self.save_state().await;
        Ok(())
    }

    /// Checks the size and BLAKE3 the sender announced against what
    /// arrived; only if both match does the object appear (the multipart
    /// upload completed, or the single `PUT` made). Otherwise the upload
    /// is aborted and nothing appears.
    pub async fn finish(mut self, size: u64, blake3: [u8; 32]) -> Result<(), StoreError> {
        if self.poisoned {
            let message = format!("{}: an earlier write failed; not stored", self.path);
            self.abort().await;
            return Err(StoreError::new(ErrorCode::Io, message));
        }
        if self.multipart.is_some()
            && !self.filling.is_empty()
            && self.size == size
            && let Err(e) = self.send_part().await
        {
            self.abort().await;
            return Err(e);
        }
        let got = match self.multipart {
            _ if self.size != size => None,
            None => Some(*blake3::hash(&self.filling).as_bytes()),
            // A multipart file has two parts or more (see `write`).
            Some(_) if self.cvs.len() < 2 => None,
            Some(_) => Some(tree::root(&self.cvs, self.part as u64, self.size)),
        };
        if got != Some(blake3) {
            let message = format!("{}: the data does not match the sender's size and BLAKE3; not stored", self.path);
            self.abort().await;
            return Err(StoreError::new(ErrorCode::Integrity, message));
        }
        let Some(id) = self.multipart.clone() else {
            let mut attributes = self.attributes.clone();
            attributes.insert(Attribute::Metadata("xfer-blake3".into()), partial::hex(&blake3).into());
            let opts = PutOptions { attributes, ..Default::default() };
            let data = PutPayload::from(std::mem::take(&mut self.filling));
            let put = self.bucket.store.put_opts(&self.key, data, opts).await;
            return put.map(|_| ()).map_err(|e| store_error(&self.path, &e));
        };
        while !self.in_flight.is_empty() {
            if let Err(e) = self.collect_one().await {
                self.abort().await;
                return Err(e);
            }
        }
        // Every part, in order: one missing would shift the rest.
        let Some(parts) = self.parts.iter().cloned().collect::<Option<Vec<PartId>>>() else {
            let message = format!("{}: a part was not stored; not stored", self.path);
            self.abort().await;
            return Err(StoreError::new(ErrorCode::Io, message));
        };
        if let Err(e) = self.bucket.record_sum(&self.path, &self.tag, &blake3).await {
            self.abort().await;
            return Err(e);
        }
        // The record is written first: no object of ours is ever visible
        // without its hash.
        if let Err(e) = self.bucket.store.complete_multipart(&self.key, &id, parts).await {
            let e = store_error(&self.path, &e);
            self.abort().await;
            return Err(e);
        }
        self.drop_state().await;
        Ok(())
    }

    /// Gives up: parts in flight are stopped and the upload is aborted, so
    /// the store keeps nothing of it.
    pub async fn abort(mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.drop_state().await;
        if let Some(id) = self.multipart.take() {
            let _ = self.bucket.store.abort_multipart(&self.key, &id).await;
        }
    }
}
