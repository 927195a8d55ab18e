//! Reading a bucket for pulls: everything under a folder, in key order
//! (so that each folder's files come together and one chain of ancestors
//! is all a sender keeps), and objects streamed with what a local file
//! keeps in its inode.

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::meta::info_from;
use super::{Bucket, FOLDER_MARKER, Info, store_error};
use crate::protocol::WirePath;
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
}

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
        Ok(listed
            .try_filter(move |l| {
                let ours = top
                    && match l {
                        Listed::File(w, _) | Listed::Folder(w) => w.components().next() == Some(STAGING_DIR),
                        Listed::Invalid(raw) => raw.split('/').next() == Some(STAGING_DIR),
                    };
                std::future::ready(!ours)
            })
            .boxed())
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
            && let Some(etag) = &got.meta.e_tag
        {
            info.blake3 = self.recorded_sum(p, etag).await;
        }
        let path = p.clone();
        let body = got.into_stream().map_err(move |e| store_error(&path, &e)).boxed();
        Ok(Reading { info, body })
    }

    /// True when the folder `p` has its marker object.
    pub async fn has_marker(&self, p: &WirePath) -> bool {
        let Ok(marker) = p.join(FOLDER_MARKER) else { return false };
        self.store.head(&self.raw_key(&marker)).await.is_ok()
    }
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

    #[test]
    fn keys_are_classified() {
        assert!(matches!(classify("a/b.txt", 3), Listed::File(p, 3) if p.as_str() == "a/b.txt"));
        assert!(matches!(classify("a/.xfer-folder", 0), Listed::Folder(p) if p.as_str() == "a"));
        assert!(matches!(classify("a//b", 1), Listed::Invalid(_)));
        assert!(matches!(classify(".xfer-folder", 0), Listed::Folder(p) if p.is_root()));
    }
}
