//! Reading a bucket for pulls: everything under a folder, in key order
//! (so that each folder's files come together and one chain of ancestors
//! is all a sender keeps), and objects streamed with what a local file
//! keeps in its inode.

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::meta::{info_from, upload_tag};
use super::{Bucket, FOLDER_MARKER, Info, store_error};
use crate::protocol::{ErrorCode, WirePath};
use crate::store::{STAGING_DIR, StoreError};

/// One key under a folder being walked.
#[derive(Debug)]
pub enum Listed {
    /// A file and its size.
    File(WirePath, u64),
    /// A folder's marker object (the folder exists, perhaps empty).
    Folder(WirePath),
    /// A key no wire path can name (written by another tool: `a//b`, a
    /// control character): reported, never sent.
    Invalid(String),
}

/// An object being read from `from` on, with its metadata.
pub struct Reading {
    pub info: Info,
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
    /// The version read (every later range must be of it).
    pub etag: Option<String>,
}

/// Bytes per ranged read of a large object, and ranges in flight at once:
/// one stream from the store runs at a fraction of what several do.
pub const RANGE: u64 = 4 << 20;
pub const RANGES_IN_FLIGHT: usize = 8;

impl Bucket {
    /// Every key under the folder `p` (the whole prefix for the root, less
    /// xfer's own area), in key order.
    pub fn walk(&self, p: &WirePath) -> Result<BoxStream<'static, Result<Listed, StoreError>>, StoreError> {
        let key = self.key(p)?;
        let strip = self.location.prefix.trim_matches('/').len();
        let path = p.clone();
        let listed = self.store.list(Some(&key)).map(move |m| {
            let m = m.map_err(|e| store_error(&path, &e))?;
            let raw = m.location.as_ref();
            let rel = if strip == 0 { raw } else { raw.get(strip + 1..).unwrap_or_default() };
            Ok(classify(rel, m.size))
        });
        let top = p.is_root();
        let listed = listed
            .try_filter(move |l| {
                let skip = match l {
                    // The prefix's own "folder" object (consoles make them).
                    Listed::File(w, _) | Listed::Folder(w) if w.is_root() => true,
                    Listed::Invalid(raw) if raw.is_empty() => true,
                    Listed::File(w, _) | Listed::Folder(w) => top && w.components().next() == Some(STAGING_DIR),
                    Listed::Invalid(raw) => top && raw.split('/').next() == Some(STAGING_DIR),
                };
                std::future::ready(!skip)
            })
            .boxed();
        Ok(folder_objects(listed))
    }

    /// Starts reading the file `p` at byte `from`: its metadata (from the
    /// same response, so they describe the bytes that follow) and a stream
    /// of its bytes.
    pub async fn open_read(&self, p: &WirePath, from: u64) -> Result<Reading, StoreError> {
        let range = (from > 0).then_some(GetRange::Offset(from));
        let opts = GetOptions { range, ..Default::default() };
        let got = self.store.get_opts(&self.key(p)?, opts).await.map_err(|e| store_error(p, &e))?;
        let mut info = info_from(&got.attributes, &got.meta);
        if info.blake3.is_none()
            && let Some(tag) = upload_tag(&got.attributes)
        {
            info.blake3 = self.recorded_sum(p, &tag).await;
        }
        let path = p.clone();
        let etag = got.meta.e_tag.clone();
        let body = got.into_stream().map_err(move |e| store_error(&path, &e)).boxed();
        Ok(Reading { info, body, etag })
    }

    /// Bytes `from..to` of the version `etag` of `p`, read as ranges of
    /// [`RANGE`] bytes, [`RANGES_IN_FLIGHT`] at a time, in order. A range
    /// of another version (the object was replaced meanwhile) is an error,
    /// never mixed in.
    pub fn read_ranges(
        &self,
        p: &WirePath,
        etag: String,
        from: u64,
        to: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let key = self.key(p)?;
        let (store, path) = (self.store.clone(), p.clone());
        let starts = (from..to).step_by(RANGE as usize);
        Ok(futures_util::stream::iter(starts)
            .map(move |start| {
                let (store, key, path, etag) = (store.clone(), key.clone(), path.clone(), etag.clone());
                async move {
                    let range = start..(start + RANGE).min(to);
                    let want = range.end - range.start;
                    let opts =
                        GetOptions { range: Some(range.into()), if_match: Some(etag.clone()), ..Default::default() };
                    let got = store.get_opts(&key, opts).await.map_err(|e| store_error(&path, &e))?;
                    // Not only the store's word: the version and length are checked.
                    if got.meta.e_tag.as_deref() != Some(etag.as_str()) {
                        return Err(StoreError::new(ErrorCode::Conflict, format!("{path}: replaced while being read")));
                    }
                    let bytes = got.bytes().await.map_err(|e| store_error(&path, &e))?;
                    if bytes.len() as u64 != want {
                        return Err(StoreError::new(ErrorCode::Io, format!("{path}: the store sent a short range")));
                    }
                    Ok(bytes)
                }
            })
            .buffered(RANGES_IN_FLIGHT)
            .boxed())
    }

    /// Each of the names `wanted` found directly in the folder `dir`: the
    /// size of a file, or `None` for a folder; from a listing of at most
    /// `at_most` keys under it (`None` past that, or if the listing
    /// failed). Listings may lag writes made through other nodes: a name
    /// missing here may still exist.
    pub async fn sizes_in(
        &self,
        dir: &WirePath,
        wanted: &std::collections::HashSet<String>,
        at_most: usize,
    ) -> Option<std::collections::HashMap<String, Option<u64>>> {
        let key = self.key(dir).ok()?;
        let strip = key.as_ref().len() + usize::from(!key.as_ref().is_empty());
        let mut sizes = std::collections::HashMap::new();
        let mut keys = self.store.list(Some(&key));
        let mut seen = 0;
        while let Some(m) = keys.next().await {
            let m = m.ok()?;
            seen += 1;
            if seen > at_most {
                return None;
            }
            let rel = m.location.as_ref().get(strip..).unwrap_or_default();
            match rel.split_once('/') {
                Some((name, _)) if wanted.contains(name) => {
                    sizes.insert(name.to_owned(), None);
                }
                None if wanted.contains(rel) => {
                    sizes.entry(rel.to_owned()).or_insert(Some(m.size));
                }
                _ => {}
            }
        }
        Some(sizes)
    }

    /// True when something is stored under `p/`: `p` is a folder.
    pub async fn is_folder(&self, p: &WirePath) -> Result<bool, StoreError> {
        let key = self.key(p)?;
        match self.store.list(Some(&key)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(store_error(p, &e)),
        }
    }

    /// True when the folder `p` has its marker object.
    pub async fn has_marker(&self, p: &WirePath) -> bool {
        let Ok(marker) = p.join(FOLDER_MARKER) else { return false };
        self.store.head(&self.raw_key(&marker)).await.is_ok()
    }
}

/// Other S3 tools make folders as empty objects named `FOLDER/` (listed
/// without the slash): an empty "file" whose name the next key continues
/// as a folder is that folder.
fn folder_objects(
    keys: BoxStream<'static, Result<Listed, StoreError>>,
) -> BoxStream<'static, Result<Listed, StoreError>> {
    type State = (BoxStream<'static, Result<Listed, StoreError>>, Option<Listed>, Option<Listed>);
    // Fused: the last key may be held back one step, and the listing's
    // stream must not be polled again once it ended.
    let start: State = (keys.fuse().boxed(), None, None);
    futures_util::stream::unfold(start, |(mut keys, mut pending, mut ready)| async move {
        loop {
            if let Some(r) = ready.take() {
                return Some((Ok(r), (keys, pending, None)));
            }
            let next = match keys.next().await {
                Some(Ok(l)) => l,
                Some(Err(e)) => return Some((Err(e), (keys, pending, None))),
                None => return pending.take().map(|p| (Ok(p), (keys, None, None))),
            };
            let empty = matches!(next, Listed::File(_, 0));
            let Some(before) = pending.take() else {
                if empty {
                    pending = Some(next);
                    continue;
                }
                return Some((Ok(next), (keys, None, None)));
            };
            let before = match (before, &next) {
                (Listed::File(dir, 0), Listed::File(p, _) | Listed::Folder(p)) if p != &dir && p.starts_with(&dir) => {
                    Listed::Folder(dir)
                }
                (before, _) => before,
            };
            (pending, ready) = if empty { (Some(next), None) } else { (None, Some(next)) };
            return Some((Ok(before), (keys, pending, ready)));
        }
    })
    .boxed()
}

/// What the key `rel` (relative to the prefix) is.
fn classify(rel: &str, size: u64) -> Listed {
    let Ok(path) = WirePath::parse(rel) else { return Listed::Invalid(rel.to_owned()) };
    match path.file_name() {
        Some(FOLDER_MARKER) => match path.parent() {
            Some(dir) => Listed::Folder(dir),
            None => Listed::Invalid(rel.to_owned()),
        },
        _ => Listed::File(path, size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn empty_objects_named_like_folders_are_folders() {
        let w = |s: &str| WirePath::parse(s).unwrap();
        let keys = vec![
            Listed::File(w("a"), 0),
            Listed::File(w("a/x"), 3),
            Listed::File(w("b"), 0),
            Listed::File(w("c"), 0),
            Listed::File(w("c/y"), 0),
            Listed::File(w("d"), 0),
        ];
        // As the store's listing: a stream that must not be polled after its end.
        let keys =
            futures_util::stream::unfold(keys.into_iter(), |mut it| async move { it.next().map(|k| (Ok(k), it)) });
        let got: Vec<_> = folder_objects(keys.boxed())
            .map(|l| match l.unwrap() {
                Listed::File(p, n) => format!("file {p} {n}"),
                Listed::Folder(p) => format!("folder {p}"),
                Listed::Invalid(r) => format!("invalid {r}"),
            })
            .collect()
            .await;
        assert_eq!(got, ["folder a", "file a/x 3", "file b 0", "folder c", "file c/y 0", "file d 0"]);
    }

    #[test]
    fn keys_are_classified() {
        assert!(matches!(classify("a/b.txt", 3), Listed::File(p, 3) if p.as_str() == "a/b.txt"));
        assert!(matches!(classify("a/.xfer-folder", 0), Listed::Folder(p) if p.as_str() == "a"));
        assert!(matches!(classify("a//b", 1), Listed::Invalid(_)));
        assert!(matches!(classify(".xfer-folder", 0), Listed::Folder(p) if p.is_root()));
    }
}
