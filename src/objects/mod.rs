//! Storage in an S3-compatible bucket (issue 15's object-store side):
//! where `serve --store s3://BUCKET/PREFIX` will keep files, with the same
//! promises as a local root. A file becomes visible only whole and only
//! after its size and BLAKE3 matched: large files stream into a multipart
//! upload (parts in flight while the next arrive) that is completed only
//! after the check and aborted otherwise; small ones wait in memory and go
//! in one `PUT` after the check. Wire paths map to keys under the prefix
//! (`PREFIX/a/b.txt`); xfer's own state lives under `PREFIX/.xfer/`.
//!
//! The client is `object_store` (Apache Arrow's): it signs with aws-lc-rs,
//! as the rest of xfer does, runs on tokio, and exposes multipart uploads
//! by id (`MultipartStore`), which resuming on another server needs.
//! Credentials come from the standard `AWS_*` variables and never reach a
//! message: errors are described by their kind and the key involved.

use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt};
use tokio::task::JoinSet;

use crate::partial::PartialId;
use crate::protocol::{ErrorCode, ListEntry, Timestamp, WirePath};
use crate::store::StoreError;

mod location;
mod meta;
mod partial;
mod read;
mod tree;
mod upload;
pub use location::Location;
pub use meta::{FOLDER_MARKER, Info};
pub use partial::Resumable;
pub use read::{Listed, RANGE, RANGES_IN_FLIGHT, Reading};
pub use upload::Upload;

/// How long a request to the store is retried (nodes restarting, a
/// network blip) before the failure is reported.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(20);

/// How long [`Bucket::check`] waits for the store.
const CHECK_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

const CREDENTIALS: &str = "the credentials were refused (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)";

/// Bytes per part of a multipart upload: S3's minimum is 5 MiB for every
/// part but the last; files smaller than one part go in a single `PUT`.
pub const PART: usize = 8 << 20;
/// S3 takes 10,000 parts per upload at most: a larger file gets larger
/// parts (twice as large, as often as needed: a part must stay a BLAKE3
/// subtree, so a power of two of 1 KiB chunks).
pub const MAX_PARTS: u64 = 10_000;
/// The largest object S3 stores (5 TiB).
pub const MAX_OBJECT: u64 = 5 << 40;

/// The part size for a file of `size` bytes: [`PART`], doubled until
/// [`MAX_PARTS`] of them hold it.
pub fn part_for(size: u64) -> usize {
    let mut part = PART as u64;
    while size.div_ceil(part) > MAX_PARTS {
        part *= 2;
    }
    part as usize
}
/// Parts of one upload in flight at once (memory: this many parts plus the
/// one filling).
pub const IN_FLIGHT: usize = 4;

/// What to reach a store with, beyond the `AWS_*` environment (which
/// fills whatever is `None`). Keys are never taken from a command line,
/// where other users of the machine could read them.
#[derive(Clone, Default)]
pub struct Access {
    /// `http://host:port` or `https://…`; plain HTTP is allowed only when
    /// asked for this way (or by `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Access key id and secret (tests; `serve` takes the environment's).
    pub keys: Option<(String, String)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.as_ref().map(|(id, _)| format!("{id} (secret withheld)"));
        f.debug_struct("Access")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("keys", &keys)
            .finish()
    }
}

/// A bucket and the prefix under it, ready to use.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    location: Location,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.location)
    }
}

impl Bucket {
    /// A client for `location`, configured from the `AWS_*` environment
    /// (keys, region, `AWS_ENDPOINT_URL`), what `access` names overriding
    /// it. Nothing is contacted yet: see [`Bucket::check`].
    pub fn open(location: Location, access: &Access) -> Result<Bucket, StoreError> {
        // A store that is down is said so within a client's idle timeout
        // (60 s by default), not after the library's three minutes.
        let retry = object_store::RetryConfig { max_retries: 5, retry_timeout: STORE_RETRY, ..Default::default() };
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&location.bucket).with_retry(retry);
        if let Some(e) = &access.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &access.region {
            b = b.with_region(r);
        }
        if let Some((id, secret)) = &access.keys {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let endpoint = access.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            b = b.with_allow_http(true);
        }
        let store = b.build().map_err(|e| StoreError::new(ErrorCode::Io, format!("{location}: {}", brief(&e))))?;
        Ok(Bucket { store: Arc::new(store), location })
    }

    /// Where this bucket is: `s3://BUCKET/PREFIX`.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Lists the prefix once, so that a store that is down, a missing
    /// bucket or refused credentials stop `serve` at start, said plainly.
    pub async fn check(&self) -> Result<(), StoreError> {
        let root = self.raw_key(&WirePath::root());
        // The client retries for minutes (right during a transfer, when a
        // node restarts); at start a server should say so at once.
        let listed = tokio::time::timeout(CHECK_WITHIN, self.store.list_with_delimiter(Some(&root))).await;
        let Ok(listed) = listed else {
            let secs = CHECK_WITHIN.as_secs();
            return Err(StoreError::new(
                ErrorCode::Io,
                format!(
                    "cannot use {}: the store did not answer within {secs} s (is the endpoint right? AWS_ENDPOINT_URL or --endpoint)",
                    self.location
                ),
            ));
        };
        listed.map(|_| ()).map_err(|e| {
            let text = e.to_string();
            let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
            let why = match &e {
                object_store::Error::NotFound { .. } => "the bucket does not exist".to_owned(),
                _ if has(&["NoSuchBucket"]) => "the bucket does not exist".to_owned(),
                object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                    CREDENTIALS.to_owned()
                }
                _ if has(&["403 Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"]) => {
                    CREDENTIALS.to_owned()
                }
                _ if has(&["error sending request", "onnection refused", "dns error"]) => {
                    "the store did not answer (is the endpoint right? AWS_ENDPOINT_URL or --endpoint)".to_owned()
                }
                other => brief(other),
            };
            StoreError::new(ErrorCode::Io, format!("cannot use {}: {why}", self.location))
        })
    }

    /// The key of a peer's wire path: refused in xfer's own area (`.xfer`
    /// at the top, in any case, as a local root refuses it) and for the
    /// folder-marker name, which listings hide.
    pub fn key(&self, p: &WirePath) -> Result<Key, StoreError> {
        if p.components().next().is_some_and(|c| c.eq_ignore_ascii_case(crate::store::STAGING_DIR)) {
            let why = format!("{p}: '{}' is reserved for xfer's own state", crate::store::STAGING_DIR);
            return Err(StoreError::new(ErrorCode::Denied, why));
        }
        if p.components().any(|c| c.eq_ignore_ascii_case(FOLDER_MARKER)) {
            return Err(StoreError::new(ErrorCode::BadPath, format!("{p}: '{FOLDER_MARKER}' is reserved for folders")));
        }
        Ok(self.raw_key(p))
    }

    /// The key of any path, xfer's own area included: its names as they
    /// are (no percent-encoding, so other S3 tools see the same names).
    /// Wire paths hold no control characters, `.` or `..`, which is all a
    /// key refuses.
    fn raw_key(&self, p: &WirePath) -> Key {
        let prefix = self.location.prefix.trim_matches('/');
        let raw = match (prefix.is_empty(), p.is_root()) {
            (true, _) => p.as_str().to_owned(),
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}/{}", p.as_str()),
        };
        Key::parse(&raw).expect("a wire path under a checked prefix is a valid key")
    }

    /// Starts receiving `p`; nothing is visible until [`Upload::finish`].
    /// With `partial`, what is stored is also kept in the bucket as it
    /// goes, so that an interrupted upload can be resumed by any server
    /// ([`Bucket::partial`], [`Bucket::resume`]).
    pub fn upload(
        &self,
        p: &WirePath,
        mode: u32,
        mtime: Timestamp,
        partial: Option<PartialId>,
    ) -> Result<Upload, StoreError> {
        debug_assert!(partial.as_ref().is_none_or(|id| id.path == p.as_str()), "a partial id names its own path");
        let tag = crate::beneath::random_hex().map_err(|e| StoreError::new(ErrorCode::Io, format!("{p}: {e}")))?;
        let mut attributes = attributes(mode, mtime);
        attributes.insert(Attribute::Metadata("xfer-upload".into()), tag.clone().into());
        Ok(Upload {
            tag,
            partial,
            first: None,
            saved: 0,
            bucket: self.clone(),
            key: self.key(p)?,
            path: p.clone(),
            attributes,
            multipart: None,
            filling: Vec::new(),
            parts: Vec::new(),
            cvs: Vec::new(),
            in_flight: JoinSet::new(),
            max_in_flight: IN_FLIGHT,
            part: PART,
            size: 0,
            poisoned: false,
        })
    }

    /// Continues the partial upload `r` of `id`'s file at `r.offset`.
    pub fn resume(&self, id: PartialId, r: Resumable, mode: u32, mtime: Timestamp) -> Result<Upload, StoreError> {
        let p = WirePath::parse(&id.path).map_err(|e| StoreError::new(ErrorCode::BadPath, e.to_string()))?;
        let mut up = self.upload(&p, mode, mtime, Some(id))?;
        up.part = r.part;
        up.saved = r.parts.len();
        up.parts = r.parts.into_iter().map(Some).collect();
        up.cvs = r.cvs;
        up.first = Some(r.first);
        up.tag = r.tag;
        up.multipart = Some(r.upload);
        up.size = r.offset;
        Ok(up)
    }

    /// The files and folders directly in the folder `dir`, sorted.
    pub async fn list(&self, dir: &WirePath) -> Result<Vec<ListEntry>, StoreError> {
        let key = self.key(dir)?;
        let listed = self.store.list_with_delimiter(Some(&key)).await.map_err(|e| store_error(dir, &e))?;
        let name = |k: &Key| k.filename().map(str::to_owned);
        let mut out = Vec::new();
        for folder in &listed.common_prefixes {
            // A name no wire path can hold (another tool wrote it) is left
            // out rather than failing the whole listing.
            if let Some(n) = name(folder).filter(|n| !(dir.is_root() && n == crate::store::STAGING_DIR))
                && let Ok(path) = dir.join(&n)
            {
                out.push(ListEntry { path, size: 0, mtime: Timestamp::default(), is_dir: true });
            }
        }
        for o in &listed.objects {
            let Some(n) = name(&o.location).filter(|n| n != FOLDER_MARKER) else { continue };
            let Ok(path) = dir.join(&n) else { continue };
            let secs = o.last_modified.timestamp();
            out.push(ListEntry { path, size: o.size, mtime: Timestamp { secs, nanos: 0 }, is_dir: false });
        }
        out.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        Ok(out)
    }

    /// The whole content of the file `p` (tests and small reads; pulls will
    /// stream ranges).
    pub async fn read(&self, p: &WirePath) -> Result<bytes::Bytes, StoreError> {
        let got = self.store.get(&self.key(p)?).await.map_err(|e| store_error(p, &e))?;
        got.bytes().await.map_err(|e| store_error(p, &e))
    }

    /// Bytes `range` of the file `p` (a pull resuming).
    pub async fn read_range(&self, p: &WirePath, range: std::ops::Range<u64>) -> Result<bytes::Bytes, StoreError> {
        self.store.get_range(&self.key(p)?, range).await.map_err(|e| store_error(p, &e))
    }

    /// Removes the file `p`.
    pub async fn remove(&self, p: &WirePath) -> Result<(), StoreError> {
        self.store.delete(&self.key(p)?).await.map_err(|e| store_error(p, &e))
    }
}

/// Metadata kept with each object: what a local file keeps in its inode.
fn attributes(mode: u32, mtime: Timestamp) -> Attributes {
    let mut a = Attributes::new();
    a.insert(Attribute::Metadata("xfer-mode".into()), format!("{:o}", mode & 0o755).into());
    a.insert(Attribute::Metadata("xfer-mtime".into()), format!("{}.{:09}", mtime.secs, mtime.nanos).into());
    a
}

/// An object-store failure on `p`, as the store layer's errors.
fn store_error(p: &WirePath, e: &object_store::Error) -> StoreError {
    let code = match e {
        object_store::Error::NotFound { .. } => ErrorCode::NotFound,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => ErrorCode::Denied,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => ErrorCode::Conflict,
        _ => ErrorCode::Io,
    };
    let why = brief(e);
    match code {
        ErrorCode::Io => StoreError::new(code, format!("{p}: the server's object store failed: {why}")),
        _ => StoreError::new(code, format!("{p}: {why}")),
    }
}

/// An error in a line: S3's own code and message when the store sent
/// them, else the first line, without a request's query string (which can
/// carry a signature).
fn brief(e: &object_store::Error) -> String {
    let text = e.to_string();
    let tag = |t: &str| {
        let start = text.find(&format!("<{t}>"))? + t.len() + 2;
        let end = text[start..].find(&format!("</{t}>"))? + start;
        Some(text[start..end].to_owned())
    };
    let line = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        // Without the request's address: peers see these messages, and
        // the store's endpoint and bucket are the server's business.
        _ => {
            let first = text.lines().next().unwrap_or_default();
            let words: Vec<&str> = first.split_whitespace().filter(|w| !w.contains("://")).collect();
            words.join(" ")
        }
    };
    crate::text::escape(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_as_powers_of_two_to_stay_within_ten_thousand() {
        assert_eq!(part_for(0), PART);
        assert_eq!(part_for(MAX_PARTS * PART as u64), PART);
        assert_eq!(part_for(MAX_PARTS * PART as u64 + 1), 2 * PART);
        assert_eq!(part_for(MAX_OBJECT), 1 << 30); // 5 TiB: 5,120 parts of 1 GiB
        assert!((MAX_OBJECT).div_ceil(part_for(MAX_OBJECT) as u64) <= MAX_PARTS);
    }

    #[test]
    fn errors_name_neither_the_endpoint_nor_the_bucket() {
        let source = "error sending request for url (http://10.0.0.5:3900/artifacts/ci/a.bin?X-Amz-Signature=abc)";
        let e = object_store::Error::Generic { store: "S3", source: source.into() };
        let line = brief(&e);
        assert!(!line.contains("10.0.0.5") && !line.contains("artifacts") && !line.contains("Signature"), "{line}");
        assert!(line.contains("error sending request"), "{line}");
        let s3 = "<Error><Code>NoSuchKey</Code><Message>Key not found</Message></Error>";
        let e = object_store::Error::Generic { store: "S3", source: s3.into() };
        assert_eq!(brief(&e), "NoSuchKey: Key not found");
    }
}
