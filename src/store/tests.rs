//! Unit tests of the store: staging, commit, links, the reserved area.

use super::*;
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};

impl Root {
    fn stage_any(&self, p: &WirePath) -> Result<Staged> {
        self.stage(p, None, None, Resume::No)
    }
}

#[test]
fn a_file_larger_than_the_free_space_is_refused_up_front() {
    let (_t, root) = server();
    let e = root.stage(&p("huge"), Some(u64::MAX / 2), None, Resume::No).unwrap_err();
    assert_eq!(e.code, ErrorCode::NoSpace);
    assert!(e.message.contains("huge: needs 8.00 EiB but only") && e.message.contains("is free"), "{}", e.message);
    assert_eq!(fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0);
    let first = root.stage(&p("small"), Some(10), None, Resume::No).unwrap();
    // A file in the same folder shares the folder's handle.
    let second = root.stage(&p("other"), Some(10), Some(first.near()), Resume::No).unwrap();
    assert_eq!(first.near().parent, second.near().parent);
}

fn p(s: &str) -> WirePath {
    WirePath::parse(s).unwrap()
}

fn server() -> (tempfile::TempDir, Root) {
    let t = tempfile::tempdir().unwrap();
    let root = Root::open_server(&t.path().join("root")).unwrap();
    (t, root)
}

#[test]
fn staged_file_appears_only_on_commit_with_mode_and_mtime() {
    let (_t, root) = server();
    let mut s = root.stage_any(&p("a/b/c.txt")).unwrap();
    s.write_all(b"hello").unwrap();
    let target = root.dir().join("a/b/c.txt");
    assert!(!target.exists(), "nothing under the final name before commit");
    s.commit(0o4777, Timestamp { secs: 1_000_000_000, nanos: 5 }).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"hello");
    let m = fs::metadata(&target).unwrap();
    #[cfg(unix)]
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(crate::walk::Meta::from(&m).mtime.secs, 1_000_000_000);
}

#[test]
fn dropped_stage_leaves_old_version_and_no_temp_files() {
    let (_t, root) = server();
    fs::write(root.dir().join("f"), b"old").unwrap();
    let mut s = root.stage_any(&p("f")).unwrap();
    s.write_all(b"new but unfinished").unwrap();
    drop(s);
    assert_eq!(fs::read(root.dir().join("f")).unwrap(), b"old");
    assert_eq!(fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0);
}

#[cfg(unix)]
#[test]
fn symlinks_are_never_followed() {
    let (t, root) = server();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(&outside, root.dir().join("esc")).unwrap();
    assert_eq!(root.stage_any(&p("esc/x")).unwrap_err().code, ErrorCode::Denied);
    assert_eq!(root.list(&p("esc/secret")).unwrap_err().code, ErrorCode::Denied);
    assert_eq!(root.mkdir(&p("esc/d")).unwrap_err().code, ErrorCode::Denied);
    assert!(root.walk(&p("esc")).is_err());
    root.remove(&p("esc"), true).unwrap();
    assert!(outside.join("secret").exists(), "removing a link never touches its target");
    assert!(!outside.join("x").exists() && !outside.join("d").exists());
}

#[cfg(unix)]
#[test]
fn a_folder_swapped_for_a_link_mid_transfer_cannot_redirect_the_write() {
    let (t, root) = server();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let mut s = root.stage_any(&p("d/f")).unwrap();
    s.write_all(b"payload").unwrap();
    // Someone with write access to the root swaps the folder for a link.
    fs::rename(root.dir().join("d"), root.dir().join("d.old")).unwrap();
    std::os::unix::fs::symlink(&outside, root.dir().join("d")).unwrap();
    s.commit(0o644, Timestamp::default()).unwrap();
    assert!(!outside.join("f").exists(), "the write followed the link");
    assert_eq!(fs::read(root.dir().join("d.old/f")).unwrap(), b"payload");
    // And new requests through the link are refused.
    assert_eq!(root.stage_any(&p("d/g")).unwrap_err().code, ErrorCode::Denied);
}

#[test]
fn a_group_commit_installs_every_file_in_order_and_leaves_no_temp_files() {
    let (_t, root) = server();
    let mut s = root.stage_any(&p("a/1")).unwrap();
    s.write_all(b"one").unwrap();
    s.prepare(0o644, Timestamp::default()).unwrap();
    let mut group = vec![Verified::Staged(s)];
    // Small files still in memory: the commit stages and writes them,
    // and one that cannot be staged ("a" is a folder) fails alone.
    for (name, data) in [("b/2", "two"), ("a", "not a folder"), ("a/1", "one, again")] {
        let (r, path) = (root.clone(), p(name));
        let stage: StageFn = Box::new(move |near| r.stage(&path, Some(data.len() as u64), near, Resume::No));
        group.push(Verified::Unwritten(Unwritten {
            path: p(name),
            stage,
            data: data.into(),
            mode: 0o600,
            mtime: Timestamp::default(),
        }));
    }
    assert!(!root.dir().join("a/1").exists(), "nothing is installed before the commit");
    let (results, _) = commit_group(group, &[]);
    assert_eq!(results.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>(), ["a/1", "b/2", "a", "a/1"]);
    let failed: Vec<bool> = results.iter().map(|(_, r)| r.is_err()).collect();
    assert_eq!(failed, [false, false, true, false], "{results:?}");
    assert_eq!(results[2].1.as_ref().unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(fs::read(root.dir().join("a/1")).unwrap(), b"one, again", "the later file wins");
    assert_eq!(fs::read(root.dir().join("b/2")).unwrap(), b"two");
    #[cfg(unix)]
    {
        let mode = fs::metadata(root.dir().join("b/2")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an unwritten file gets its mode when the commit writes it");
    }
    assert_eq!(fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0);
}

#[test]
fn staging_area_is_reserved_and_hidden() {
    let (_t, root) = server();
    fs::write(root.dir().join("visible"), b"v").unwrap();
    for op in [
        root.stage_any(&p(".xfer/tmp/x")).map(drop),
        root.mkdir(&p(".xfer/x")).map(drop),
        root.list(&p(".xfer")).map(drop),
    ] {
        assert_eq!(op.unwrap_err().code, ErrorCode::Denied);
    }
    let names: Vec<_> = root.list(&WirePath::root()).unwrap().into_iter().map(|e| e.path.to_string()).collect();
    assert_eq!(names, ["visible"]);
}

#[test]
fn conflicts_and_missing_paths_are_reported() {
    let (_t, root) = server();
    fs::write(root.dir().join("file"), b"x").unwrap();
    fs::create_dir(root.dir().join("dir")).unwrap();
    assert_eq!(root.stage_any(&p("file/x")).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(root.stage_any(&p("dir")).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(root.stage_any(&WirePath::root()).unwrap_err().code, ErrorCode::BadPath);
    assert_eq!(root.list(&p("nope")).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(root.remove(&p("dir"), false).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(root.remove(&WirePath::root(), true).unwrap_err().code, ErrorCode::Denied);
    root.remove(&p("dir"), true).unwrap();
    root.remove(&p("file"), false).unwrap();
    assert!(root.list(&WirePath::root()).unwrap().is_empty());
}

#[test]
fn local_roots_stage_beside_the_target() {
    let t = tempfile::tempdir().unwrap();
    let root = Root::open_local(t.path()).unwrap();
    let s = root.stage_any(&p("d/f")).unwrap();
    let tmp: Vec<_> = fs::read_dir(t.path().join("d")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(tmp.len(), 1);
    assert!(tmp[0].to_string_lossy().starts_with(".xfer-"));
    s.commit(0o644, Timestamp::default()).unwrap();
    assert!(t.path().join("d/f").exists());
}
