//! What a local file keeps in its inode, kept with each object: mtime and
//! mode as user metadata, and its BLAKE3, so that `ls` shows them and an
//! identical re-push is skipped without reading the object back.
//!
//! A single `PUT` carries the BLAKE3 in its metadata (it is checked before
//! the `PUT`). A multipart upload's metadata is fixed when it starts,
//! before the hash is known, so its BLAKE3 goes in a record,
//! `PREFIX/.xfer/sums/NAME.json`, written before the upload is completed.
//! Each upload carries a random tag in its metadata (`xfer-upload`) and the
//! record names the tag it is for: it is believed only for the object with
//! that tag, so a record left behind by a replaced or racing version is
//! never taken for the current one, and an upload never completes before
//! its record is written. (Racing uploads of one path can still leave the
//! object without a believed record: it is then hashed when read, and a
//! re-push sends it again. Nothing ever carries a wrong hash.)
//!
//! Folders exist in a bucket only through what is in them; an empty folder
//! is a marker object, `FOLDER/.xfer-folder`, which listings leave out.

use object_store::path::Path as Key;
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{Bucket, store_error};
use crate::protocol::{ErrorCode, Timestamp, WirePath};
use crate::store::StoreError;

/// The marker object of a folder that may be empty.
pub const FOLDER_MARKER: &str = ".xfer-folder";

/// What a stored file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub size: u64,
    pub mtime: Timestamp,
    pub mode: u32,
    /// Known when the object carries it, or a record vouches for it.
    pub blake3: Option<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
struct Sum {
    path: String,
    /// The `xfer-upload` tag of the object it is for.
    upload: String,
    blake3: String,
}

impl Bucket {
    fn sum_key(&self, p: &WirePath) -> Key {
        let name = format!("{}.json", &blake3::hash(p.as_str().as_bytes()).to_hex()[..32]);
        let dir = WirePath::root().join(crate::store::STAGING_DIR).and_then(|d| d.join("sums"));
        self.raw_key(&dir.and_then(|d| d.join(&name)).expect("valid components"))
    }

    /// Records the BLAKE3 of the upload tagged `upload`, about to complete.
    pub(super) async fn record_sum(&self, p: &WirePath, upload: &str, blake3: &[u8; 32]) -> Result<(), StoreError> {
        let sum = Sum { path: p.as_str().to_owned(), upload: upload.to_owned(), blake3: super::partial::hex(blake3) };
        let json = serde_json::to_vec(&sum).expect("a sum serializes");
        self.store.put(&self.sum_key(p), PutPayload::from(json)).await.map(|_| ()).map_err(|e| store_error(p, &e))
    }

    /// The file `p`, if there is one (a `HEAD`, plus the sum record for a
    /// multipart object).
    pub async fn stat(&self, p: &WirePath) -> Result<Option<Info>, StoreError> {
        let opts = GetOptions { head: true, ..Default::default() };
        let got = match self.store.get_opts(&self.key(p)?, opts).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(p, &e)),
        };
        let mut info = info_from(&got.attributes, &got.meta);
        if info.blake3.is_none()
            && let Some(tag) = upload_tag(&got.attributes)
        {
            info.blake3 = self.recorded_sum(p, &tag).await;
        }
        Ok(Some(info))
    }

    pub(super) async fn recorded_sum(&self, p: &WirePath, upload: &str) -> Option<[u8; 32]> {
        let bytes = self.store.get(&self.sum_key(p)).await.ok()?.bytes().await.ok()?;
        let sum: Sum = serde_json::from_slice(&bytes).ok()?;
        (sum.path == p.as_str() && sum.upload == upload).then(|| super::partial::from_hex(&sum.blake3)).flatten()
    }

    /// Makes the folder `p` exist, empty or not (its marker object).
    pub async fn mkdir(&self, p: &WirePath) -> Result<(), StoreError> {
        if p.is_root() {
            return Err(StoreError::new(ErrorCode::BadPath, "the root folder itself cannot be created"));
        }
        self.key(p)?;
        // As a local root would: a folder never replaces a file.
        if self.stat(p).await?.is_some() {
            return Err(StoreError::new(ErrorCode::Conflict, format!("{p}: is a file on the server")));
        }
        let marker = p.join(FOLDER_MARKER).map_err(|e| StoreError::new(ErrorCode::BadPath, e.to_string()))?;
        self.store.put(&self.raw_key(&marker), PutPayload::default()).await.map(|_| ()).map_err(|e| store_error(p, &e))
    }

    /// Removes the file `p`, or the folder `p` with everything in it when
    /// `recursive` (a folder with anything in it is refused otherwise).
    /// Objects go in batches (S3's `DeleteObjects`).
    pub async fn remove_path(&self, p: &WirePath, recursive: bool) -> Result<(), StoreError> {
        if p.is_root() {
            return Err(StoreError::new(ErrorCode::Denied, "the root folder itself cannot be removed"));
        }
        if self.stat(p).await?.is_some() {
            // The object first: it is never there without its record.
            self.remove(p).await?;
            let _ = self.store.delete(&self.sum_key(p)).await;
            return Ok(());
        }
        use futures_util::{StreamExt, TryStreamExt};
        let keys: Vec<Key> = self
            .store
            .list(Some(&self.key(p)?))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| store_error(p, &e))?;
        let marker = self.raw_key(&p.join(FOLDER_MARKER).expect("a valid component"));
        if keys.is_empty() {
            return Err(StoreError::new(ErrorCode::NotFound, format!("{p}: no such file or folder")));
        }
        if !recursive && keys.iter().any(|k| *k != marker) {
            return Err(StoreError::new(
                ErrorCode::Conflict,
                format!("{p}: is a folder that is not empty; -r removes it"),
            ));
        }
        // Each file's BLAKE3 record goes with it (records are believed only
        // for their ETag, but would otherwise pile up).
        let sums: Vec<Key> = keys
            .iter()
            .filter_map(|k| self.wire_path(k))
            .filter(|w| w.file_name() != Some(FOLDER_MARKER))
            .map(|w| self.sum_key(&w))
            .collect();
        let stream = futures_util::stream::iter(keys.into_iter().chain(sums).map(Ok)).boxed();
        self.store.delete_stream(stream).try_collect::<Vec<_>>().await.map(|_| ()).map_err(|e| store_error(p, &e))
    }
}

/// What an object's response says of it: xfer's metadata when it has
/// them (it was pushed through xfer), else what the store knows.
pub(super) fn info_from(attributes: &object_store::Attributes, meta: &object_store::ObjectMeta) -> Info {
    let get = |k: &str| attributes.get(&Attribute::Metadata(k.to_owned().into())).map(|v| v.to_string());
    let mtime = get("xfer-mtime")
        .and_then(|t| parse_mtime(&t))
        .unwrap_or(Timestamp { secs: meta.last_modified.timestamp(), nanos: 0 });
    let mode = get("xfer-mode").and_then(|m| u32::from_str_radix(&m, 8).ok()).unwrap_or(0o644) & 0o755;
    let blake3 = get("xfer-blake3").and_then(|h| super::partial::from_hex(&h));
    Info { size: meta.size, mtime, mode, blake3 }
}

impl Bucket {
    /// The wire path of a key under the prefix, if it has one.
    fn wire_path(&self, k: &Key) -> Option<WirePath> {
        let prefix = self.location.prefix.trim_matches('/');
        let raw = k.as_ref();
        let rel = if prefix.is_empty() { raw } else { raw.strip_prefix(prefix)?.strip_prefix('/')? };
        WirePath::parse(rel).ok()
    }
}

/// The random tag xfer gave a multipart upload (see the module's doc).
pub(super) fn upload_tag(attributes: &object_store::Attributes) -> Option<String> {
    attributes.get(&Attribute::Metadata("xfer-upload".into())).map(|v| v.to_string())
}

fn parse_mtime(t: &str) -> Option<Timestamp> {
    let (secs, nanos) = t.split_once('.')?;
    Some(Timestamp { secs: secs.parse().ok()?, nanos: nanos.parse::<u32>().ok()?.min(999_999_999) })
}
