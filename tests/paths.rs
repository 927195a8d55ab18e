//! Hostile and mistaken paths: refused with exit 4, whichever side catches
//! them, and nothing ever lands outside the root.

use std::fs;

use tokio::io::AsyncWriteExt;
use xfer::protocol::{ErrorCode, Frame, WirePath};

use crate::support::*;

#[test]
fn traversal_paths_from_the_cli_are_refused_with_exit_4() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("sub/root"), &[]);
    work.write("f.txt", b"x");
    let cases: [&[&str]; 7] = [
        &["push", "f.txt", "--to", "../x"],
        &["push", "f.txt", "--to", "/etc/x"],
        &["push", "f.txt", "--to", "a/../../x"],
        &["pull", "../x"],
        &["pull", "/etc/passwd"],
        &["ls", "a/../../x"],
        &["rm", "../f.txt"],
    ];
    for args in cases {
        let run = client(&pki, "client", work.path(), args[0], &server, &args[1..]);
        run.assert_code(4);
        assert!(run.stderr().contains("refused remote path"), "{run}");
    }
    assert_eq!(work.listing("sub"), ["root", "root/.xfer", "root/.xfer/partial", "root/.xfer/tmp"]);
    assert!(!work.join("x").exists() && !work.join("passwd").exists());
}

#[test]
fn a_symlink_inside_the_root_never_leads_outside_it() {
    let pki = Pki::new();
    let work = Dir::new();
    work.write("outside/secret", b"secret");
    fs::create_dir_all(work.join("root")).unwrap();
    std::os::unix::fs::symlink(work.join("outside"), work.join("root/esc")).unwrap();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("f.txt", b"x");

    let push = client(&pki, "client", work.path(), "push", &server, &["f.txt", "--to", "esc"]);
    push.assert_code(4);
    assert!(!work.join("outside/f.txt").exists());
    let pull = client(&pki, "client", work.path(), "pull", &server, &["esc/secret", "--out", "got"]);
    pull.assert_code(4);
    assert!(!work.join("got/secret").exists());
    assert!(pull.stderr().contains("symbolic link"), "{pull}");
}

#[test]
fn the_server_refuses_hostile_paths_on_the_wire_and_keeps_serving() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("sub/root"), &[]);
    let hostile: [&[u8]; 6] =
        [b"../escape.txt", b"/etc/escape.txt", b"a/../../escape.txt", b"a\\b", b"bad\xff", b".xfer/tmp/x"];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
        let mut out = xfer::protocol::preamble().to_vec();
        for path in hostile {
            // Each refused header is followed by its payload, which the
            // server must skip to stay in sync.
            let header = raw_file_header(path, 4);
            let decoded = Frame::decode(&header);
            assert!(
                decoded.as_ref().map_or_else(|e| e.is_file_header(), |_| path.starts_with(b".xfer")),
                "{decoded:?}"
            );
            out.extend_from_slice(&header);
            out.extend(encode(&[
                Frame::Data(bytes::Bytes::from_static(b"evil")),
                Frame::End { blake3: *blake3::hash(b"evil").as_bytes() },
            ]));
        }
        // Then a good file on the same connection.
        let good = WirePath::parse("good.txt").unwrap();
        out.extend(encode(&[
            Frame::File(xfer::protocol::FileHeader::new(good, 2, 0o644, Default::default())),
            Frame::Data(bytes::Bytes::from_static(b"ok")),
            Frame::End { blake3: *blake3::hash(b"ok").as_bytes() },
        ]));
        w.write_all(&out).await.unwrap();
        w.flush().await.unwrap();

        assert_eq!(r.read_preamble(std::time::Duration::from_secs(10)).await.unwrap(), xfer::protocol::VERSION);
        for path in hostile {
            match r.read_frame().await.unwrap() {
                Some(Frame::Error { code, .. }) => {
                    assert!(matches!(code, ErrorCode::BadPath | ErrorCode::Denied), "{code:?}")
                }
                other => panic!("expected a refusal of {}, got {other:?}", String::from_utf8_lossy(path)),
            }
        }
        assert!(matches!(r.read_frame().await.unwrap(), Some(Frame::Stored { size: 2, .. })));
    });
    assert_eq!(fs::read(work.join("sub/root/good.txt")).unwrap(), b"ok");
    assert!(!work.join("sub/escape.txt").exists() && !work.join("escape.txt").exists());
    assert!(!work.join("sub/root/.xfer/tmp/x").exists());
    assert_eq!(work.listing("sub/root/.xfer/tmp"), Vec::<String>::new());
}

/// On a filesystem that folds case (here: told so, as Linux's own does
/// not), a second name that differs only by case is refused rather than
/// written over the first, pushing and pulling alike; the first stays.
#[test]
fn names_that_differ_only_by_case_are_refused_where_case_folds() {
    let pki = Pki::new();
    let work = Dir::new();
    let folds = [("XFER_FAULT_CASE_INSENSITIVE", "1")];
    let server = XferServer::start_with_env(&pki, &work.join("root"), &[], &folds);
    work.write("docs/README", b"upper");
    work.write("docs/Readme", b"mixed");
    work.write("docs/other", b"o");
    let push = client(&pki, "client", work.path(), "push", &server, &["docs"]);
    push.assert_code(4);
    assert!(push.stderr().contains("docs/Readme: differs only by case from docs/README"), "{push}");
    assert_eq!(fs::read(work.join("root/docs/README")).unwrap(), b"upper");
    assert!(!work.join("root/docs/Readme").exists() && work.join("root/docs/other").exists());

    // The other way: a server (case-sensitive) holds both; the pull's
    // destination folds case.
    fs::write(work.join("root/docs/Readme"), b"mixed").unwrap();
    let pull = client_env(&pki, "client", work.path(), "pull", &server, &["docs", "--out", "got"], &folds);
    pull.assert_code(4);
    assert!(pull.stderr().contains("differs only by case from docs/README"), "{pull}");
    assert_eq!(fs::read(work.join("got/docs/README")).unwrap(), b"upper");
    assert!(!work.join("got/docs/Readme").exists() && work.join("got/docs/other").exists());
}
