//! Where a server keeps files: the one face its connection handlers reach
//! storage through. Two implementations sit behind it: a local root folder
//! (`--root`, the `store` module: staging, group commit, partial copies on
//! disk) and an S3-compatible bucket (`--store s3://…`, the `objects`
//! module: multipart uploads completed only after their BLAKE3 matched,
//! partial state kept in the bucket so any server on it can resume).
//!
//! Requests without payload are answered here for both. Pushes, probes
//! and pulls move data in ways that differ by nature (a staged file and a
//! group commit, or parts in flight and a completed upload): the handler
//! has one module per kind for those (`push`/`pull`, `bucket`).

#[cfg(feature = "s3")]
use futures_util::StreamExt;

use crate::beneath::DirFd;
#[cfg(feature = "s3")]
use crate::objects::Bucket;
#[cfg(feature = "s3")]
use crate::protocol::ErrorCode;
use crate::protocol::{ListEntry, WirePath};
use crate::store::{CaseNames, Root, StoreError};
use crate::transfer::blocking;

type Result<T> = std::result::Result<T, StoreError>;

/// Symbolic links found by a listing: path and target.
pub(super) type Links = Vec<(WirePath, String)>;

/// HEADs in flight at once while a listing learns its files' mtimes.
#[cfg(feature = "s3")]
const LIST_HEADS: usize = 16;

/// A server's storage.
pub(super) enum Storage {
    Local(Root),
    #[cfg(feature = "s3")]
    Objects(Bucket),
}

impl Storage {
    /// What is served, for the start-up log line.
    pub(super) fn describe(&self) -> String {
        match self {
            Storage::Local(root) => root.dir().display().to_string(),
            #[cfg(feature = "s3")]
            Storage::Objects(b) => b.location().to_string(),
        }
    }

    /// A record of one connection's paths, refusing names that differ only
    /// by case where the storage would take them for one (never in a
    /// bucket: keys are case-sensitive).
    pub(super) fn case_names(&self) -> CaseNames {
        match self {
            Storage::Local(root) => root.case_names(),
            #[cfg(feature = "s3")]
            Storage::Objects(_) => CaseNames::new(false),
        }
    }

    /// Refuses paths in xfer's own area (and names the storage cannot hold).
    pub(super) fn check_reserved(&self, p: &WirePath) -> Result<()> {
        match self {
            Storage::Local(root) => root.check_reserved(p),
            #[cfg(feature = "s3")]
            Storage::Objects(b) => b.key(p).map(|_| ()),
        }
    }

    /// Creates the folder `p`. A local folder comes back with its
    /// filesystem, to be made durable by the next group commit; a bucket's
    /// marker is durable once stored.
    pub(super) async fn mkdir(&self, p: &WirePath) -> Result<Option<(Option<u64>, DirFd)>> {
        match self {
            Storage::Local(root) => {
                let (root, p) = (root.clone(), p.clone());
                blocking(move || root.mkdir(&p).map(|d| Some((d.device().ok(), d)))).await
            }
            #[cfg(feature = "s3")]
            Storage::Objects(b) => b.mkdir(p).await.map(|()| None),
        }
    }

    /// Makes the symbolic link `p` to `target`.
    pub(super) async fn link(&self, p: &WirePath, target: &str) -> Result<()> {
        match self {
            Storage::Local(root) => {
                let (root, p, t) = (root.clone(), p.clone(), target.to_owned());
                blocking(move || root.link(&p, &t)).await
            }
            #[cfg(feature = "s3")]
            Storage::Objects(_) => Err(StoreError::new(
                ErrorCode::BadPath,
                format!("{p}: this server keeps files in an object store, which holds no symbolic links"),
            )),
        }
    }

    /// Removes the file `p`, or the folder `p` (with what is in it when
    /// `recursive`).
    pub(super) async fn remove(&self, p: &WirePath, recursive: bool) -> Result<()> {
        match self {
            Storage::Local(root) => {
                let (root, p) = (root.clone(), p.clone());
                blocking(move || root.remove(&p, recursive)).await
            }
            #[cfg(feature = "s3")]
            Storage::Objects(b) => b.remove_path(p, recursive).await,
        }
    }

    /// What is in the folder `p` (or the file `p` alone), and its links.
    pub(super) async fn list(&self, p: &WirePath) -> Result<(Vec<ListEntry>, Links)> {
        match self {
            Storage::Local(root) => {
                let (root, p) = (root.clone(), p.clone());
                blocking(move || root.list_with_links(&p)).await
            }
            #[cfg(feature = "s3")]
            Storage::Objects(b) => list_objects(b, p).await.map(|e| (e, Vec::new())),
        }
    }
}

/// A bucket's listing with each file's mtime as it was pushed (a listing
/// gives only the store's upload time: the HEADs fetch xfer's metadata).
#[cfg(feature = "s3")]
async fn list_objects(b: &Bucket, p: &WirePath) -> Result<Vec<ListEntry>> {
    let mut entries = b.list(p).await?;
    if entries.is_empty() && !p.is_root() {
        if let Some(info) = b.stat(p).await? {
            return Ok(vec![ListEntry { path: p.clone(), size: info.size, mtime: info.mtime, is_dir: false }]);
        }
        if !b.has_marker(p).await {
            return Err(StoreError::new(ErrorCode::NotFound, format!("{p}: no such file or folder")));
        }
    }
    let files: Vec<usize> = (0..entries.len()).filter(|&i| !entries[i].is_dir).collect();
    let heads: Vec<_> = futures_util::stream::iter(files)
        .map(|i| {
            let path = entries[i].path.clone();
            async move { (i, b.stat(&path).await) }
        })
        .buffer_unordered(LIST_HEADS)
        .collect()
        .await;
    for (i, head) in heads {
        // A file removed since the listing keeps what the listing said.
        if let Ok(Some(info)) = head {
            (entries[i].size, entries[i].mtime) = (info.size, info.mtime);
        }
    }
    Ok(entries)
}
