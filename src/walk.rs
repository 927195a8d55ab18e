//! Streaming, depth-first walk of a local tree, for senders.
//!
//! Memory is bounded by depth × the widest folder (each folder's names are
//! sorted so transfers are deterministic), never by the size of the tree.
//! Symbolic links and special files inside the tree are reported as skipped,
//! never followed: following them would let a tree reach outside itself.

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::protocol::{Timestamp, WirePath};

/// Size, permissions and modification time of a file or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    pub mode: u32,
    pub mtime: Timestamp,
}

impl From<&Metadata> for Meta {
    fn from(m: &Metadata) -> Meta {
        Meta {
            size: m.len(),
            mode: m.mode() & 0o7777,
            mtime: Timestamp { secs: m.mtime(), nanos: m.mtime_nsec().clamp(0, 999_999_999) as u32 },
        }
    }
}

/// One thing found by a walk, named by its destination path.
#[derive(Debug)]
pub enum Item {
    Dir {
        rel: WirePath,
        meta: Meta,
    },
    File {
        rel: WirePath,
        abs: PathBuf,
        meta: Meta,
    },
    /// Not sent: a symbolic link, a device, a socket, an unencodable name.
    Skipped {
        rel: String,
        reason: String,
    },
    /// Could not be read (permissions, vanished while walking).
    Failed {
        rel: String,
        error: String,
    },
}

/// Iterator over the items below (and including) a starting point.
pub struct Walk {
    first: Option<Item>,
    stack: Vec<Level>,
}

struct Level {
    abs: PathBuf,
    rel: WirePath,
    names: std::vec::IntoIter<OsString>,
}

impl Walk {
    /// Walks `abs`, naming items from `rel` downwards. With `rel` the root,
    /// the starting folder itself is not yielded, only what it holds, and
    /// any top-level name in `hide` is left out (the server's staging area).
    /// `meta` is the starting point's metadata as the caller resolved it.
    /// Fails only when the starting folder itself cannot be read.
    pub fn new(abs: PathBuf, rel: WirePath, meta: &Metadata, hide: Option<&str>) -> std::io::Result<Walk> {
        let mut walk = Walk { first: None, stack: Vec::new() };
        if meta.is_dir() {
            let names = read_names(&abs, if rel.is_root() { hide } else { None })?;
            if !rel.is_root() {
                walk.first = Some(Item::Dir { rel: rel.clone(), meta: meta.into() });
            }
            walk.stack.push(Level { abs, rel, names: names.into_iter() });
        } else {
            walk.first = Some(classify(abs, rel, meta));
        }
        Ok(walk)
    }
}

impl Iterator for Walk {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if let Some(item) = self.first.take() {
            return Some(item);
        }
        loop {
            let level = self.stack.last_mut()?;
            let Some(name) = level.names.next() else {
                self.stack.pop();
                continue;
            };
            let abs = level.abs.join(&name);
            let rel = match name.to_str().ok_or(()).and_then(|n| level.rel.join(n).map_err(|_| ())) {
                Ok(rel) => rel,
                Err(()) => {
                    // Not a deliberate skip: the user asked for this file.
                    let lossy = name.to_string_lossy();
                    let shown = if level.rel.is_root() { lossy.into_owned() } else { format!("{}/{lossy}", level.rel) };
                    let error = "its name cannot be sent (not UTF-8, or it breaks the path rules of PROTOCOL.md)";
                    return Some(Item::Failed { rel: shown, error: error.into() });
                }
            };
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    return Some(Item::Failed { rel: rel.to_string(), error: e.to_string() });
                }
            };
            if meta.is_dir() {
                match read_names(&abs, None) {
                    Ok(names) => self.stack.push(Level { abs, rel: rel.clone(), names: names.into_iter() }),
                    Err(e) => {
                        return Some(Item::Failed { rel: rel.to_string(), error: e.to_string() });
                    }
                }
                return Some(Item::Dir { rel, meta: (&meta).into() });
            }
            return Some(classify(abs, rel, &meta));
        }
    }
}

fn classify(abs: PathBuf, rel: WirePath, meta: &Metadata) -> Item {
    let ft = meta.file_type();
    if ft.is_file() {
        Item::File { rel, abs, meta: meta.into() }
    } else if ft.is_symlink() {
        Item::Skipped { rel: rel.to_string(), reason: "symbolic link (not followed)".into() }
    } else {
        Item::Skipped { rel: rel.to_string(), reason: "not a regular file".into() }
    }
}

fn read_names(dir: &std::path::Path, hide: Option<&str>) -> std::io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if hide.is_some_and(|h| name == h) {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_depth_first_sorted_and_skips_links() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir_all(d.join("sub/empty")).unwrap();
        fs::write(d.join("b.txt"), b"b").unwrap();
        fs::write(d.join("a.txt"), b"aa").unwrap();
        fs::write(d.join("sub/c"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let meta = fs::symlink_metadata(&d).unwrap();
        let got: Vec<String> = Walk::new(d, WirePath::parse("to/d").unwrap(), &meta, None)
            .unwrap()
            .map(|i| match i {
                Item::Dir { rel, .. } => format!("D {rel}"),
                Item::File { rel, meta, .. } => format!("F {rel} {}", meta.size),
                Item::Skipped { rel, .. } => format!("S {rel}"),
                Item::Failed { rel, .. } => format!("X {rel}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "D to/d",
                "F to/d/a.txt 2",
                "F to/d/b.txt 1",
                "S to/d/link",
                "D to/d/sub",
                "F to/d/sub/c 0",
                "D to/d/sub/empty"
            ]
        );
    }

    #[test]
    fn walking_a_root_hides_the_named_entry() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join(".xfer")).unwrap();
        fs::write(t.path().join("f"), b"x").unwrap();
        let meta = fs::metadata(t.path()).unwrap();
        let got: Vec<_> = Walk::new(t.path().into(), WirePath::root(), &meta, Some(".xfer")).unwrap().collect();
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Item::File { rel, .. } if rel.as_str() == "f"));
    }
}
