//! Streaming, depth-first walk of a tree, for senders.
//!
//! Memory is bounded by depth × the widest folder (each folder's names are
//! sorted so transfers are deterministic), never by the size of the tree.
//! The walk holds open folders ([`DirFd`]) and names files relative to them,
//! so symbolic links and special files inside the tree are reported as
//! skipped and never followed, even if one is swapped in while walking.

mod filter;
pub use filter::{Filter, MAX_PATTERNS, is_pattern};

use std::ffi::OsString;

use crate::beneath::{DirFd, Kind};
use crate::protocol::{Timestamp, WirePath};

/// Size, permissions and modification time of a file or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    pub mode: u32,
    pub mtime: Timestamp,
}

impl Meta {
    /// A meta from a size, a mode's permission bits and a modification time
    /// (which may predate 1970).
    pub fn new(size: u64, mode: u32, mtime: std::time::SystemTime) -> Meta {
        let mtime = match mtime.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                match d.subsec_nanos() {
                    0 => Timestamp { secs: -(d.as_secs() as i64), nanos: 0 },
                    n => Timestamp { secs: -(d.as_secs() as i64) - 1, nanos: 1_000_000_000 - n },
                }
            }
        };
        Meta { size, mode: mode & 0o7777, mtime }
    }
}

impl From<&std::fs::Metadata> for Meta {
    #[cfg(unix)]
    fn from(m: &std::fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        Meta {
            size: m.len(),
            mode: m.mode() & 0o7777,
            mtime: Timestamp { secs: m.mtime(), nanos: m.mtime_nsec().clamp(0, 999_999_999) as u32 },
        }
    }

    /// Windows has no modes: folders read as 0755, files as 0644, or 0444
    /// when read-only.
    #[cfg(not(unix))]
    fn from(m: &std::fs::Metadata) -> Meta {
        let mode = match () {
            _ if m.is_dir() => 0o755,
            _ if m.permissions().readonly() => 0o444,
            _ => 0o644,
        };
        Meta::new(m.len(), mode, m.modified().unwrap_or(std::time::UNIX_EPOCH))
    }
}

/// One thing found by a walk, named by its destination path.
#[derive(Debug)]
pub enum Item {
    Dir {
        rel: WirePath,
        meta: Meta,
    },
    /// A regular file: `name` inside the open folder `dir`; for a small
    /// file, maybe its content, read ahead by whoever runs the walk.
    File {
        rel: WirePath,
        dir: DirFd,
        name: OsString,
        meta: Meta,
        ahead: Option<Box<Ahead>>,
    },
    /// A symbolic link whose target stays inside the tree being walked,
    /// sent as a link with `--links` (see [`crate::links`]).
    Link {
        rel: WirePath,
        target: String,
    },
    /// Not sent on purpose: a link out of the tree, a device, a socket.
    Skipped {
        rel: String,
        reason: String,
    },
    /// Could not be sent (unreadable, vanished, a name the protocol cannot
    /// carry).
    Failed {
        rel: String,
        error: String,
    },
}

/// A small file's content, read ahead of its turn, with the metadata the
/// open file had and whether it still had it once read.
#[derive(Debug)]
pub struct Ahead {
    pub meta: Meta,
    pub data: Vec<u8>,
    pub unchanged: bool,
    /// The share of a server's memory budget `data` uses, if any.
    pub charge: Option<crate::budget::Charge>,
}

/// Iterator over the items below (and including) a starting point.
pub struct Walk {
    first: Option<Item>,
    stack: Vec<Level>,
    /// What was asked for: links must lead inside it to be [`Item::Link`]s.
    top: WirePath,
    /// Entries looked at so far, those the filter left out included.
    examined: u64,
    /// Where the walk stops early (entries looked at, a moment), and
    /// whether it did: a count must stay cheap even when a filter leaves
    /// almost everything out.
    limit: Option<(u64, std::time::Instant)>,
    cut: bool,
    /// Patterns to leave out, and how many leading components of an
    /// item's name are the destination folder rather than what the user
    /// named.
    filter: Option<(Filter, usize, Option<String>)>,
}

struct Level {
    dir: DirFd,
    rel: WirePath,
    names: std::vec::IntoIter<OsString>,
}

impl Walk {
    /// Walks the entry `name` of `parent`, naming items from `rel`
    /// downwards. Fails only when that entry cannot be looked at, or is a
    /// folder that cannot be read.
    pub fn entry(parent: &DirFd, name: &std::ffi::OsStr, rel: WirePath) -> std::io::Result<Walk> {
        Walk::entry_in(parent, name, rel.clone(), rel)
    }

    /// [`Walk::entry`], as part of the larger tree `top` (a sync's
    /// destination folder, for each of the source folder's entries): links
    /// must stay inside `top` to be [`Item::Link`]s.
    pub fn entry_in(parent: &DirFd, name: &std::ffi::OsStr, rel: WirePath, top: WirePath) -> std::io::Result<Walk> {
        let found = parent
            .stat(name)?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"))?;
        let mut walk = Walk { first: None, stack: Vec::new(), filter: None, top, examined: 0, limit: None, cut: false };
        match found.kind {
            Kind::Dir => {
                let dir = parent.open_dir(name)?;
                let names = dir.names()?;
                walk.first = Some(Item::Dir { rel: rel.clone(), meta: found.meta });
                walk.stack.push(Level { dir, rel, names: names.into_iter() });
            }
            kind => walk.first = Some(classify(kind, parent.clone(), name.to_owned(), rel, found.meta, &walk.top)),
        }
        Ok(walk)
    }

    /// Walks what folder `dir` holds (not the folder itself), naming items
    /// from the root; a top-level name equal to `hide` is left out (the
    /// server's staging area).
    pub fn contents(dir: DirFd, hide: Option<&str>) -> std::io::Result<Walk> {
        let mut names = dir.names()?;
        // Compared without case, like the reservation it serves.
        names.retain(|n| hide.is_none_or(|h| !n.to_str().is_some_and(|n| n.eq_ignore_ascii_case(h))));
        Ok(Walk {
            first: None,
            stack: vec![Level { dir, rel: WirePath::root(), names: names.into_iter() }],
            filter: None,
            top: WirePath::root(),
            examined: 0,
            limit: None,
            cut: false,
        })
    }
}

impl Walk {
    /// Leaves out what `filter` excludes, matching each item's name less
    /// its first `strip` components (the destination folder).
    pub fn filtered(self, filter: Option<Filter>, strip: usize) -> Walk {
        self.filtered_as(filter, strip, None)
    }

    /// [`Walk::filtered`], matching names as if they began with `prefix`
    /// (what the user named, when the walk sends a folder's contents under
    /// another name: `cp site HOST:www` matches `site/conf/.env`).
    pub fn filtered_as(mut self, filter: Option<Filter>, strip: usize, prefix: Option<String>) -> Walk {
        self.filter = filter.map(|f| (f, strip, prefix));
        if let Some(first) = &self.first {
            let (rel, is_dir) = match first {
                Item::Dir { rel, .. } => (rel.as_str().to_owned(), true),
                Item::File { rel, .. } => (rel.as_str().to_owned(), false),
                _ => return self,
            };
            if self.excluded(&rel, is_dir) {
                self.first = None;
                self.stack.clear();
            }
        }
        self
    }

    fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        excluded(self.filter.as_ref(), rel, is_dir)
    }

    /// The items (all but folders: each gets an outcome) and bytes this
    /// walk yields, if it meets at most `max_entries` entries (folders
    /// too: a tree of empty folders costs as much to walk) within
    /// `deadline`: a total worth announcing only when it is cheap to know.
    pub fn count(mut self, max_entries: u64, deadline: std::time::Duration) -> Option<(u64, u64)> {
        // Entries a filter leaves out cost a look too: the walk itself
        // stops at the limit, whatever it yields.
        self.limit = Some((max_entries, std::time::Instant::now() + deadline));
        let (mut items, mut bytes) = (0u64, 0u64);
        for item in self.by_ref() {
            match item {
                Item::Dir { .. } => continue,
                Item::File { meta, .. } => bytes = bytes.saturating_add(meta.size),
                Item::Link { .. } | Item::Skipped { .. } | Item::Failed { .. } => {}
            }
            items += 1;
        }
        (!self.cut).then_some((items, bytes))
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
            self.examined += 1;
            if let Some((max, until)) = self.limit
                && (self.examined > max || (self.examined.is_multiple_of(64) && std::time::Instant::now() > until))
            {
                self.cut = true;
                self.stack.clear();
                return None;
            }
            let Some(rel) = name.to_str().and_then(|n| level.rel.join(n).ok()) else {
                // Not a deliberate skip: the user asked for this file.
                let lossy = name.to_string_lossy();
                let shown = if level.rel.is_root() { lossy.into_owned() } else { format!("{}/{lossy}", level.rel) };
                let error = "its name cannot be sent (not UTF-8, or it breaks the path rules of PROTOCOL.md)";
                return Some(Item::Failed { rel: shown, error: error.into() });
            };
            let found = match level.dir.stat(&name) {
                Ok(Some(e)) => e,
                Ok(None) => continue, // removed while walking: nothing to send
                Err(e) => return Some(Item::Failed { rel: rel.to_string(), error: e.to_string() }),
            };
            // Left out on purpose: not sent, not reported, not walked into.
            if excluded(self.filter.as_ref(), rel.as_str(), found.kind == Kind::Dir) {
                continue;
            }
            if found.kind == Kind::Dir {
                let opened = level.dir.open_dir(&name).and_then(|d| Ok((d.names()?, d)));
                return Some(match opened {
                    Ok((names, dir)) => {
                        self.stack.push(Level { dir, rel: rel.clone(), names: names.into_iter() });
                        Item::Dir { rel, meta: found.meta }
                    }
                    Err(e) => Item::Failed { rel: rel.to_string(), error: e.to_string() },
                });
            }
            return Some(classify(found.kind, level.dir.clone(), name, rel, found.meta, &self.top));
        }
    }
}

fn excluded(filter: Option<&(Filter, usize, Option<String>)>, rel: &str, is_dir: bool) -> bool {
    let Some((filter, strip, prefix)) = filter else { return false };
    let named: Vec<&str> = prefix.iter().map(String::as_str).chain(rel.split('/').skip(*strip)).collect();
    !named.is_empty() && filter.excludes(&named.join("/"), is_dir)
}

fn classify(kind: Kind, dir: DirFd, name: OsString, rel: WirePath, meta: Meta, top: &WirePath) -> Item {
    match kind {
        Kind::File => Item::File { rel, dir, name, meta, ahead: None },
        Kind::Symlink => link(&dir, &name, rel, top),
        Kind::Dir | Kind::Other => Item::Skipped { rel: rel.to_string(), reason: "not a regular file".into() },
    }
}

/// A link as an [`Item::Link`] when its target stays inside `top`; else
/// skipped, saying why (the target is the walker's own data: shown escaped
/// by whoever prints it).
fn link(dir: &DirFd, name: &OsString, rel: WirePath, top: &WirePath) -> Item {
    let target = match dir.read_link(name) {
        Ok(t) => t,
        Err(e) => return Item::Failed { rel: rel.to_string(), error: e.to_string() },
    };
    let skip = |why: String| Item::Skipped { rel: rel.to_string(), reason: format!("symbolic link not sent: {why}") };
    let Some(text) = target.to_str() else { return skip("its target is not UTF-8".into()) };
    if let Err(why) = crate::links::check_target(text) {
        return skip(format!("{why} ({text})"));
    }
    if !crate::links::within(top, &rel, text) {
        return skip(format!("it points outside the tree being sent ({text})"));
    }
    Item::Link { target: text.to_owned(), rel }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn show(i: Item) -> String {
        match i {
            Item::Dir { rel, .. } => format!("D {rel}"),
            Item::File { rel, meta, .. } => format!("F {rel} {}", meta.size),
            Item::Link { rel, target } => format!("L {rel} -> {target}"),
            Item::Skipped { rel, .. } => format!("S {rel}"),
            Item::Failed { rel, .. } => format!("X {rel}"),
        }
    }

    /// A line ` #x` is a live pattern (`ignore` reads comments only from
    /// the first column): it counts toward the limits like any other.
    #[test]
    fn pattern_limits_count_every_live_line() {
        let spaced: Vec<String> = (0..65).map(|i| format!(" #p{i}")).collect();
        assert!(Filter::new(&spaced, &[], &[]).unwrap_err().contains("at most 64"));
        assert!(Filter::from_text(&spaced.join("\n")).unwrap_err().contains("at most 64"));
        assert!(Filter::from_text(" #*?*?*?").unwrap_err().contains("wildcards"));
        let commented = (0..100).map(|i| format!("# note {i}")).chain(["*.map".into()]).collect::<Vec<_>>().join("\n");
        assert!(Filter::from_text(&commented).unwrap().is_some());
        assert!(is_pattern(" #x") && !is_pattern("#x") && !is_pattern("   "));
    }

    #[cfg(unix)]
    #[test]
    fn walks_depth_first_sorted_and_skips_links() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir_all(d.join("sub/empty")).unwrap();
        fs::write(d.join("b.txt"), b"b").unwrap();
        fs::write(d.join("a.txt"), b"aa").unwrap();
        fs::write(d.join("sub/c"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/c", d.join("near")).unwrap();
        std::os::unix::fs::symlink("../../x", d.join("sub/far")).unwrap();
        let parent = DirFd::open_path(t.path()).unwrap();
        let got: Vec<String> =
            Walk::entry(&parent, "d".as_ref(), WirePath::parse("to/d").unwrap()).unwrap().map(show).collect();
        assert_eq!(
            got,
            [
                "D to/d",
                "F to/d/a.txt 2",
                "F to/d/b.txt 1",
                "S to/d/link",
                "L to/d/near -> sub/c",
                "D to/d/sub",
                "F to/d/sub/c 0",
                "D to/d/sub/empty",
                "S to/d/sub/far"
            ]
        );
    }

    #[test]
    fn filters_leave_out_what_gitignore_lines_exclude() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("dist");
        fs::create_dir_all(d.join("node_modules/x")).unwrap();
        fs::create_dir_all(d.join("maps")).unwrap();
        fs::write(d.join("app.js"), b"1").unwrap();
        fs::write(d.join("app.js.map"), b"2").unwrap();
        fs::write(d.join("keep.map"), b"3").unwrap();
        fs::write(d.join("node_modules/x/y.js"), b"4").unwrap();
        fs::write(d.join("maps/z"), b"5").unwrap();
        let filter =
            Filter::new(&["*.map".into(), "node_modules/".into(), "/dist/maps".into()], &["keep.map".into()], &[])
                .unwrap();
        let parent = DirFd::open_path(t.path()).unwrap();
        let walk = Walk::entry(&parent, "dist".as_ref(), WirePath::parse("to/dist").unwrap()).unwrap();
        let got: Vec<String> = walk.filtered(filter, 1).map(show).collect();
        assert_eq!(got, ["D to/dist", "F to/dist/app.js 1", "F to/dist/keep.map 1"]);
        assert!(Filter::new(&[], &[], &[]).unwrap().is_none());
    }

    #[test]
    fn walking_contents_hides_the_named_entry_and_names_from_the_root() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join(".xfer")).unwrap();
        fs::write(t.path().join("f"), b"x").unwrap();
        let got: Vec<String> =
            Walk::contents(DirFd::open_path(t.path()).unwrap(), Some(".xfer")).unwrap().map(show).collect();
        assert_eq!(got, ["F f 1"]);
    }

    #[cfg(unix)] // Windows cannot name a file with a backslash
    #[test]
    fn unsendable_names_are_failures_not_skips() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("back\\slash"), b"x").unwrap();
        let got: Vec<String> = Walk::contents(DirFd::open_path(t.path()).unwrap(), None).unwrap().map(show).collect();
        assert_eq!(got, ["X back\\slash"]);
    }
}
