//! Probes on a server whose storage is a bucket: for each file a push
//! announces, the BLAKE3 of a stored file of the same size (from its
//! metadata or record: nothing is read back) and the partial upload this
//! client left of that version, which any server on the bucket can offer.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use tracing::{info, warn};

use super::Conn;
use super::objects::Claim;
use crate::error::Result;
use crate::objects::Bucket;
use crate::partial::{PartialId, RESUMABLE_MIN};
use crate::protocol::{ErrorCode, Frame, Have, WirePath};
use crate::store::StoreError;

/// What a probe asks: path, size, the partial id of that version, whether
/// this client may push it and whether it may read it.
pub(super) type Ask = (WirePath, u64, PartialId, std::result::Result<(), StoreError>, bool);

/// Probes answered against the store at once.
const PROBES_IN_FLIGHT: usize = 64;
impl Conn {
    /// Answers probes from the store: the BLAKE3 of a stored file of the
    /// same size (from its metadata: nothing is read back), shown only to
    /// clients allowed to read it, and the partial upload this client left
    /// of this version of the file, claimed until its `File`.
    pub(super) async fn probe_objects(&mut self, b: Bucket, asks: Vec<Ask>) -> Result<()> {
        let listed = folder_sizes(&b, &asks).await;
        let files_above = file_ancestors(&b, &asks).await;
        let answers: Vec<_> = futures_util::stream::iter(asks)
            .map(|(path, size, id, allowed, readable)| {
                let b = b.clone();
                // What a listing of the folder says of this name, if the
                // folder was listed: a file of this size (worth a HEAD for
                // its hash), any other file or nothing (no HEAD: nothing
                // the same to skip sending), or a folder.
                let seen = path.parent().and_then(|d| listed.get(&d)).map(|names| {
                    match path.file_name().and_then(|n| names.get(n)) {
                        Some(None) => Seen::Folder,
                        Some(Some(s)) if *s == size => Seen::Same,
                        _ => Seen::Other,
                    }
                });
                let above = std::iter::successors(path.parent(), WirePath::parent)
                    .take_while(|d| !d.is_root())
                    .find(|d| files_above.contains(d));
                async move {
                    // As a local root would: nothing goes beneath a file.
                    let allowed = allowed.and_then(|()| match above {
                        Some(file) => Err(StoreError::new(
                            ErrorCode::Conflict,
                            format!("{path}: {file} is a file on the server, not a folder"),
                        )),
                        None => Ok(()),
                    });
                    let folder = match seen {
                        Some(Seen::Folder) => Ok(true),
                        Some(_) => Ok(false),
                        None if allowed.is_ok() => b.is_folder(&path).await,
                        None => Ok(false),
                    };
                    let allowed = allowed.and(folder).and_then(|folder| match folder {
                        // As a local root would: a file never replaces a folder.
                        true => Err(StoreError::new(
                            ErrorCode::Conflict,
                            format!("{path}: is a folder on the server; remove it first (xfer rm -r)"),
                        )),
                        false => Ok(()),
                    });
                    let absent = matches!(seen, Some(Seen::Other));
                    let found = match allowed {
                        Err(e) => Err(e),
                        Ok(()) => {
                            let complete = match (readable && !absent).then(|| b.stat(&path)) {
                                Some(stat) => {
                                    stat.await.ok().flatten().filter(|i| i.size == size).and_then(|i| i.blake3)
                                }
                                None => None,
                            };
                            let partial = if size >= RESUMABLE_MIN { b.partial(&id).await } else { None };
                            Ok((complete, partial))
                        }
                    };
                    (path, id, found)
                }
            })
            .buffered(PROBES_IN_FLIGHT)
            .collect()
            .await;
        for (path, id, found) in answers {
            let frame = match found {
                Err(e) => {
                    warn!(path = %path, "push refused: {}", e.message);
                    Frame::Error { code: e.code, message: e.message }
                }
                Ok((complete, partial)) => {
                    let mut have = Have { complete, ..Have::default() };
                    if let Some(resumable) = partial {
                        (have.offset, have.prefix) = (resumable.offset, resumable.prefix);
                        info!(path = %path, offset = resumable.offset, "offering a partial upload for resume");
                        self.object_claims.insert(path, Claim { id, resumable });
                    }
                    Frame::Have(have)
                }
            };
            self.reply_in_order(frame).await?;
        }
        Ok(())
    }
}

/// Folders listed at most for one run of probes, and keys per listing: a
/// run of probes in a few folders lists them instead of a `HEAD` per file.
const PROBE_FOLDERS: usize = 64;
const PROBE_LISTING: usize = 5_000;

/// What the folders of a run of probes hold (those listed whole), when
/// the run has several probes per folder.
/// Folders above probed paths looked at, at most, for one run of probes.
const PROBE_ANCESTORS: usize = 256;

/// Which folders above the paths of a run of probes are files (a `HEAD`
/// each, once per run; past [`PROBE_ANCESTORS`], the rest are not checked).
async fn file_ancestors(b: &Bucket, asks: &[Ask]) -> HashSet<WirePath> {
    let mut above: HashSet<WirePath> = HashSet::new();
    for (path, ..) in asks.iter().filter(|a| a.3.is_ok()) {
        for d in std::iter::successors(path.parent(), WirePath::parent).take_while(|d| !d.is_root()) {
            if above.len() >= PROBE_ANCESTORS {
                break;
            }
            above.insert(d);
        }
    }
    futures_util::stream::iter(above)
        .map(|d| async move { matches!(b.stat(&d).await, Ok(Some(_))).then_some(d) })
        .buffer_unordered(PROBES_IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// What a folder listing showed of a probed name.
enum Seen {
    Folder,
    Same,
    Other,
}

async fn folder_sizes(b: &Bucket, asks: &[Ask]) -> HashMap<WirePath, HashMap<String, Option<u64>>> {
    let mut folders: HashMap<WirePath, HashSet<String>> = Default::default();
    for (path, _, _, allowed, readable) in asks {
        if let (Ok(()), true, Some(dir), Some(name)) = (allowed, readable, path.parent(), path.file_name()) {
            folders.entry(dir).or_default().insert(name.to_owned());
        }
    }
    if folders.is_empty() || folders.len() > PROBE_FOLDERS || asks.len() < 4 * folders.len() {
        return Default::default();
    }
    futures_util::stream::iter(folders)
        .map(|(d, names)| async move { b.sizes_in(&d, &names, PROBE_LISTING).await.map(|sizes| (d, sizes)) })
        .buffer_unordered(16)
        .filter_map(std::future::ready)
        .collect()
        .await
}
