//! Symbolic links (`--links`): sent as links when they stay inside the
//! tree, recreated by the receiver without ever being followed; the rest
//! skipped with the reason; hostile peers cannot use links to reach out.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use xfer::protocol::{ErrorCode, FileHeader, Frame, Timestamp, WirePath};

use crate::support::*;

/// dist/ with a file, a link inside the tree, and two leading out of it.
fn tree(work: &Dir) {
    work.write("dist/app.bin", b"app");
    work.write("dist/lib/core.bin", b"core");
    work.write("secret.txt", b"outside");
    symlink("app.bin", work.join("dist/current")).unwrap();
    symlink("../app.bin", work.join("dist/lib/app")).unwrap();
    symlink("../secret.txt", work.join("dist/escape")).unwrap();
    symlink("/etc/passwd", work.join("dist/absolute")).unwrap();
    // A pivot and a chain through it: each looks inside as text.
    symlink(".", work.join("dist/self")).unwrap();
    symlink("self/self/../../secret.txt", work.join("dist/chain")).unwrap();
}

fn link_of(p: &Path) -> Option<String> {
    std::fs::read_link(p).ok().map(|t| t.display().to_string())
}

#[test]
fn push_with_links_sends_links_inside_the_tree_and_says_why_others_stay() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    tree(&work);
    let run = client(&pki, "client", work.path(), "push", &server, &["dist", "--links"]);
    run.assert_code(0);
    let root = work.join("root/dist");
    assert_eq!(link_of(&root.join("current")).as_deref(), Some("app.bin"));
    assert_eq!(link_of(&root.join("lib/app")).as_deref(), Some("../app.bin"));
    for never in ["escape", "absolute", "self", "chain"] {
        assert!(root.join(never).symlink_metadata().is_err(), "{never} was made");
    }
    let err = run.stderr();
    assert!(err.contains("skipped dist/escape: symbolic link not sent: it points outside the tree"), "{run}");
    assert!(err.contains("skipped dist/absolute: symbolic link not sent: its target is an absolute path"), "{run}");
    assert!(
        err.contains("skipped dist/chain: symbolic link not sent: its target climbs with '..' after a name"),
        "{run}"
    );
    assert!(err.contains("pushed 2 files") && err.contains("; 2 symbolic links"), "{run}");

    // JSON names the target; without --links, links are skipped, saying how.
    let json = client(&pki, "client", work.path(), "push", &server, &["dist", "--links", "--json", "--to", "j"]);
    let lines = json.json();
    let cur = lines.iter().find(|l| l["path"] == "j/dist/current").expect("a line for the link");
    assert_eq!((cur["status"].as_str(), cur["link"].as_str()), (Some("ok"), Some("app.bin")), "{json}");
    let plain = client(&pki, "client", work.path(), "push", &server, &["dist", "--to", "plain"]);
    plain.assert_code(0);
    assert!(plain.stderr().contains("--links sends it as a link"), "{plain}");
    assert!(work.join("root/plain/dist/current").symlink_metadata().is_err());

    // A dry run says what it would link, and links nothing.
    let dry = client(&pki, "client", work.path(), "push", &server, &["dist", "--links", "-n", "--to", "dry"]);
    dry.assert_code(0);
    assert!(dry.stderr().contains("would link dry/dist/current -> app.bin"), "{dry}");
    assert!(!work.join("root/dry").exists());
}

#[test]
fn pull_with_links_recreates_them_and_without_it_skips_them() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/dist/app.bin", b"app");
    work.write("root/dist/lib/core.bin", b"core");
    symlink("../app.bin", work.join("root/dist/lib/app")).unwrap();
    symlink("../../elsewhere", work.join("root/dist/out")).unwrap();

    let run = client(&pki, "client", work.path(), "pull", &server, &["dist", "--out", "got", "--links"]);
    run.assert_code(0);
    assert_eq!(link_of(&work.join("got/dist/lib/app")).as_deref(), Some("../app.bin"));
    assert_eq!(std::fs::read(work.join("got/dist/lib/app")).unwrap(), b"app");
    // Out of the tree asked for: the server skips it, saying why.
    assert!(work.join("got/dist/out").symlink_metadata().is_err());
    assert!(run.stderr().contains("skipped dist/out: symbolic link not sent: it points outside"), "{run}");

    let run = client(&pki, "client", work.path(), "pull", &server, &["dist", "--out", "plain"]);
    run.assert_code(0);
    assert!(run.stderr().contains("skipped dist/lib/app: symbolic link (not made; --links makes it)"), "{run}");
    assert!(work.join("plain/dist/lib/app").symlink_metadata().is_err());
}

/// What a hostile client can do with LINK: nothing outside the root, the
/// staging area, or through a link it made.
#[test]
fn a_server_makes_links_only_inside_its_root_and_never_follows_them() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/sub/kept.txt", b"kept");
    let link = |path: &str, target: &str| Frame::Link { path: WirePath::parse(path).unwrap(), target: target.into() };
    let file =
        |path: &str| Frame::File(FileHeader::new(WirePath::parse(path).unwrap(), 1, 0o644, Timestamp::default()));
    let frames = [
        link("up", "../../etc"),
        link("abs", "/etc"),
        link("stage", ".xfer/partial"),
        link("d/deep", "../../x"),
        // Chains a review found: a link to a folder it is in, then names
        // through it (text says inside, the kernel goes elsewhere).
        link("top", "."),
        link("d/r", ".."),
        link("d/stg", "r/.xfer/partial"),
        link("d/s", "../d"),
        link("d/esc", "s/s/../../../etc/passwd"),
        link("via", "sub"),
        file("via/new.txt"),
        Frame::Data(bytes::Bytes::from_static(b"x")),
        Frame::End { blake3: *blake3::hash(b"x").as_bytes() },
        Frame::Get { path: WirePath::parse("via").unwrap() },
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let replies = rt.block_on(async {
        let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        w.write_all(&encode(&frames)).await.unwrap();
        w.flush().await.unwrap();
        r.read_preamble(Duration::from_secs(10)).await.unwrap();
        let mut replies = Vec::new();
        while replies.len() < 12 {
            match r.read_frame().await {
                Ok(Some(f)) => replies.push(f),
                _ => break,
            }
        }
        replies
    });
    let codes: Vec<String> = replies
        .iter()
        .map(|f| match f {
            Frame::Error { code, .. } => format!("{code:?}"),
            other => other.name().to_owned(),
        })
        .collect();
    let bad = format!("{:?}", ErrorCode::BadPath);
    let denied = format!("{:?}", ErrorCode::Denied);
    assert_eq!(codes[..9], vec![bad.clone(); 9], "{replies:?}");
    assert_eq!(codes[9..], ["OK".to_owned(), denied.clone(), denied], "{replies:?}");
    let root = work.join("root");
    assert_eq!(link_of(&root.join("via")).as_deref(), Some("sub"));
    for made in ["up", "abs", "stage", "d/deep", "top", "d/r", "d/stg", "d/s", "d/esc", "sub/new.txt"] {
        assert!(root.join(made).symlink_metadata().is_err(), "{made} was made");
    }
    assert_eq!(std::fs::read(root.join("sub/kept.txt")).unwrap(), b"kept");
}

/// A hostile server's link out of what was asked for is refused by the
/// client, which makes nothing.
#[test]
fn a_client_refuses_a_servers_link_out_of_the_tree() {
    let pki = Pki::new();
    let work = Dir::new();
    let out = Frame::Link { path: WirePath::parse("d/l").unwrap(), target: "../../../etc".into() };
    let run = pull_from_fake(&pki, &work, vec![out], &["--links"]);
    run.assert_code(1);
    assert!(run.stderr().contains("refused a link from the server"), "{run}");
    assert!(work.join("got/d/l").symlink_metadata().is_err());
}

#[test]
fn sync_with_links_and_delete_keeps_the_links_it_makes() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    tree(&work);
    let ids = pki.id_args("client");
    let mut args = vec!["sync".to_owned(), "dist".into(), format!("{}:www", server.addr), "--links".into()];
    args.extend(ids.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_in(work.path(), &args, &[]).assert_code(0);
    assert_eq!(link_of(&work.join("root/www/current")).as_deref(), Some("app.bin"));

    let mut args = vec!["sync".to_owned(), format!("{}:www", server.addr), "back".into(), "--links".into()];
    args.push("--delete".into());
    args.extend(ids.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_in(work.path(), &args, &[]).assert_code(0);
    // A second run: the links made by the first are not removed as extra.
    let again = run_in(work.path(), &args, &[]);
    again.assert_code(0);
    assert_eq!(link_of(&work.join("back/current")).as_deref(), Some("app.bin"));
    assert_eq!(link_of(&work.join("back/lib/app")).as_deref(), Some("../app.bin"));
    assert!(again.stderr().contains("removed 0 paths"), "{again}");
}

#[test]
fn a_pulled_link_out_of_the_entry_asked_for_is_skipped_and_says_why() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/a/file", b"a");
    work.write("root/b/file", b"b");
    symlink("../a/file", work.join("root/b/to-a")).unwrap();
    let run = client(&pki, "client", work.path(), "pull", &server, &["b", "--out", "got", "--links"]);
    run.assert_code(0);
    assert!(
        run.stderr().contains("skipped b/to-a: symbolic link not made: it points outside the tree pulled (../a/file)"),
        "{run}"
    );
    assert!(work.join("got/b/to-a").symlink_metadata().is_err());
    // The whole root pulled: the same link is inside it.
    let run = client(&pki, "client", work.path(), "pull", &server, &["", "--out", "all", "--links"]);
    run.assert_code(0);
    assert_eq!(link_of(&work.join("all/b/to-a")).as_deref(), Some("../a/file"));
    // ls shows links with their targets.
    let ls = client(&pki, "client", work.path(), "ls", &server, &["b"]);
    assert!(ls.stdout().contains("to-a -> ../a/file"), "{ls}");
}

/// A server that ignores the FILTER and sends an excluded file anyway
/// does not get it written over the local one.
#[test]
fn a_server_ignoring_the_filter_cannot_write_what_exclude_protects() {
    let pki = Pki::new();
    let work = Dir::new();
    work.write("got/d/secret.local", b"MINE");
    let h = FileHeader::new(WirePath::parse("d/secret.local").unwrap(), 4, 0o644, Timestamp::default());
    let data = Frame::Data(bytes::Bytes::from_static(b"EVIL"));
    let end = Frame::End { blake3: *blake3::hash(b"EVIL").as_bytes() };
    let run = pull_from_fake(&pki, &work, vec![Frame::File(h), data, end], &["--exclude", "*.local"]);
    run.assert_code(1);
    assert!(run.stderr().contains("the server sent what --exclude leaves out"), "{run}");
    assert_eq!(std::fs::read(work.join("got/d/secret.local")).unwrap(), b"MINE");
}
