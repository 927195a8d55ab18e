//! Partial uploads that outlive the server receiving them. What a server
//! knows of an interrupted push lives in the bucket, under
//! `PREFIX/.xfer/partial/NAME.json` (NAME as for a local partial copy: the
//! sender and the path): the multipart upload's id, the parts stored so
//! far, and each part's BLAKE3 chaining value. Any server on the bucket
//! can then offer the verified prefix (its BLAKE3 merged from the chaining
//! values, nothing read back) and finish the upload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blake3::hazmat::ChainingValue;
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{Bucket, PART, Upload, tree};
use crate::partial::PartialId;
use crate::protocol::WirePath;

/// What is kept of one interrupted upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    peer: String,
    path: String,
    size: u64,
    mtime: (i64, u32),
    upload: String,
    /// Stored parts, in order, with their chaining values (hex).
    parts: Vec<(String, String)>,
    /// The BLAKE3 of the first part alone (a prefix of one part).
    first: String,
    /// The upload's tag (see `meta`).
    #[serde(default)]
    tag: String,
    /// Bytes per part.
    #[serde(default = "default_part")]
    part: u64,
}

fn default_part() -> u64 {
    PART as u64
}

/// A partial upload another attempt can continue.
#[derive(Debug)]
pub struct Resumable {
    /// Bytes stored, all verified.
    pub offset: u64,
    /// Their BLAKE3.
    pub prefix: [u8; 32],
    pub(super) upload: String,
    pub(super) parts: Vec<PartId>,
    pub(super) cvs: Vec<ChainingValue>,
    pub(super) first: [u8; 32],
    pub(super) tag: String,
    pub(super) part: usize,
}

impl Bucket {
    fn partial_key(&self, id: &PartialId) -> Key {
        let dir = WirePath::root().join(crate::store::STAGING_DIR).and_then(|d| d.join("partial"));
        let name = format!("{}.json", id.data_name());
        self.raw_key(&dir.and_then(|d| d.join(&name)).expect("valid components"))
    }

    /// The partial upload kept for `id`, if one is kept for this very
    /// version of the file (same size and mtime).
    pub async fn partial(&self, id: &PartialId) -> Option<Resumable> {
        let bytes = self.store.get(&self.partial_key(id)).await.ok()?.bytes().await.ok()?;
        let s: State = serde_json::from_slice(&bytes).ok()?;
        let mtime = id.mtime();
        if (s.peer.as_str(), s.path.as_str(), s.size, s.mtime)
            != (&*id.peer, &*id.path, id.size, (mtime.secs, mtime.nanos))
            || s.parts.is_empty()
            || !(s.part.is_power_of_two() && s.part >= PART as u64)
            || (s.parts.len() as u64) * s.part >= s.size
        {
            return None;
        }
        let cvs = s.parts.iter().map(|(_, cv)| from_hex(cv)).collect::<Option<Vec<_>>>()?;
        let first = from_hex(&s.first)?;
        let offset = s.parts.len() as u64 * s.part;
        let prefix = if cvs.len() == 1 { first } else { tree::root(&cvs, s.part, offset) };
        let parts = s.parts.into_iter().map(|(id, _)| PartId { content_id: id }).collect();
        let part = s.part as usize;
        Some(Resumable { offset, prefix, upload: s.upload, parts, cvs, first, tag: s.tag, part })
    }

    /// Gives up the partial upload kept for `id`'s path and sender, whatever
    /// version of the file it was for: its multipart upload is aborted and
    /// its state removed, before a new upload takes its place (whose state
    /// would otherwise overwrite the only record of the old upload's id).
    /// State saved less than `older_than` ago belongs to an upload that may
    /// still be going on (through another server): it is left alone.
    pub async fn forget_partial(&self, id: &PartialId, older_than: Duration) {
        let key = self.partial_key(id);
        let Ok(got) = self.store.get(&key).await else { return };
        let saved = UNIX_EPOCH + Duration::from_secs(got.meta.last_modified.timestamp().max(0) as u64);
        if SystemTime::now().duration_since(saved).is_ok_and(|age| age < older_than) {
            return;
        }
        if let Ok(bytes) = got.bytes().await
            && let Ok(s) = serde_json::from_slice::<State>(&bytes)
            && let Ok(path) = WirePath::parse(&s.path)
        {
            let _ = self.store.abort_multipart(&self.raw_key(&path), &s.upload).await;
        }
        let _ = self.store.delete(&key).await;
    }

    /// Removes partial uploads older than `ttl`, aborting their multipart
    /// uploads, so the store keeps nothing of them. Returns how many.
    pub async fn expire_partials(&self, ttl: Duration) -> usize {
        let dir = self.raw_key(&WirePath::root().join(crate::store::STAGING_DIR).unwrap().join("partial").unwrap());
        let old: Vec<_> = self
            .store
            .list(Some(&dir))
            .filter_map(|m| async move { m.ok() })
            .filter(|m| {
                let age = SystemTime::now()
                    .duration_since(UNIX_EPOCH + Duration::from_secs(m.last_modified.timestamp().max(0) as u64));
                std::future::ready(age.is_ok_and(|a| a >= ttl))
            })
            .collect()
            .await;
        let mut gone = 0;
        for m in old {
            // Listings can lag a removal made through another server.
            let Ok(got) = self.store.get(&m.location).await else { continue };
            if let Ok(bytes) = got.bytes().await
                && let Ok(s) = serde_json::from_slice::<State>(&bytes)
                && let Ok(path) = WirePath::parse(&s.path)
            {
                let _ = self.store.abort_multipart(&self.raw_key(&path), &s.upload).await;
            }
            if self.store.delete(&m.location).await.is_ok() {
                gone += 1;
            }
        }
        gone
    }
}

impl Upload {
    /// Saves what is stored so far, when the stored prefix grew.
    pub(super) async fn save_state(&mut self) {
        let (Some(id), Some(upload), Some(first)) = (&self.partial, &self.multipart, self.first) else { return };
        let done = self.parts.iter().take_while(|p| p.is_some()).count();
        if done <= self.saved {
            return;
        }
        let mtime = id.mtime();
        let state = State {
            peer: id.peer.clone(),
            path: id.path.clone(),
            size: id.size,
            mtime: (mtime.secs, mtime.nanos),
            upload: upload.clone(),
            parts: (0..done).map(|i| (self.parts[i].clone().expect("counted").content_id, hex(&self.cvs[i]))).collect(),
            first: hex(&first),
            tag: self.tag.clone(),
            part: self.part as u64,
        };
        let json = serde_json::to_vec(&state).expect("state serializes");
        let key = self.bucket.partial_key(id);
        if self.bucket.store.put(&key, PutPayload::from(json)).await.is_ok() {
            self.saved = done;
        }
    }

    /// Forgets the saved state (the upload completed, or was given up).
    pub(super) async fn drop_state(&self) {
        if let Some(id) = &self.partial {
            let _ = self.bucket.store.delete(&self.bucket.partial_key(id)).await;
        }
    }
}

/// Lower-case hex, as `b3sum` prints a hash (chaining values too).
pub(super) fn hex(b: &[u8; 32]) -> String {
    crate::transfer::hex(b)
}

pub(super) fn from_hex(s: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(s).ok().map(|h| *h.as_bytes())
}
