//! Speaking the protocol directly: version mismatch, malformed frames and
//! lies about sizes each get an error reply (or a clean close) and leave
//! nothing behind, and the server goes on serving others.

use std::fs;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use xfer::protocol::{ErrorCode, FileHeader, Frame, WirePath};

use crate::support::*;

fn file(path: &str, size: u64) -> Frame {
    Frame::File(FileHeader::new(WirePath::parse(path).unwrap(), size, 0o644, Default::default()))
}

fn data(b: &'static [u8]) -> Frame {
    Frame::Data(bytes::Bytes::from_static(b))
}

/// Sends `bytes` after the handshake and returns the frames the server
/// answered with (after its preamble) until it closed.
fn exchange(pki: &Pki, server: &XferServer, bytes: Vec<u8>) -> (u16, Vec<Frame>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut r, mut w) = raw_connect(pki, "client", server).await;
        w.write_all(&bytes).await.unwrap();
        w.flush().await.unwrap();
        let _ = w.shutdown().await;
        let version = r.read_preamble(Duration::from_secs(10)).await.unwrap();
        let mut frames = Vec::new();
        while let Ok(Some(f)) = r.read_frame().await {
            frames.push(f);
        }
        (version, frames)
    })
}

#[test]
fn a_client_speaking_another_version_gets_a_clear_error() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let (version, frames) = exchange(&pki, &server, b"XFER\x00\x63".to_vec());
    assert_eq!(version, xfer::protocol::VERSION);
    match &frames[..] {
        [Frame::Error { code: ErrorCode::Version, message }] => assert!(message.contains("99"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn payload_that_disagrees_with_the_header_is_refused_and_not_installed() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let mut out = xfer::protocol::preamble().to_vec();
    // Too short: 3 bytes for a header of 10.
    out.extend(encode(&[file("short", 10), data(b"abc"), Frame::End { blake3: *blake3::hash(b"abc").as_bytes() }]));
    // Wrong hash.
    out.extend(encode(&[file("wrong", 3), data(b"abc"), Frame::End { blake3: [0; 32] }]));
    // Abandoned by the sender.
    out.extend(encode(&[file("aborted", 3), data(b"ab"), Frame::Abort { reason: "test".into() }]));
    // A good one after all that.
    out.extend(encode(&[file("good", 3), data(b"abc"), Frame::End { blake3: *blake3::hash(b"abc").as_bytes() }]));
    // Too long: more payload than announced ends the connection.
    out.extend(encode(&[file("long", 1), data(b"abc")]));
    let (_, frames) = exchange(&pki, &server, out);
    let codes: Vec<String> = frames
        .iter()
        .map(|f| match f {
            Frame::Error { code, .. } => format!("{code:?}"),
            other => other.name().to_owned(),
        })
        .collect();
    assert_eq!(codes, ["Integrity", "Integrity", "Aborted", "STORED", "Protocol"], "{frames:?}");
    assert_eq!(work.listing("root"), [".xfer", ".xfer/partial", ".xfer/tmp", "good"]);
    assert_eq!(fs::read(work.join("root/good")).unwrap(), b"abc");
}

#[test]
fn malformed_frames_get_an_error_and_a_close_and_others_are_unaffected() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let pre = xfer::protocol::preamble().to_vec();
    let cases: Vec<Vec<u8>> = vec![
        [pre.clone(), vec![0x7f, 0, 0, 0, 0]].concat(),             // unknown type
        [pre.clone(), vec![0x01, 0xff, 0xff, 0xff, 0xff]].concat(), // oversized length
        [pre.clone(), vec![0x21, 0, 0, 0, 1, 0]].concat(),          // OK with trailing byte
        [pre.clone(), encode(&[data(b"stray")])].concat(),          // data outside a file
        [pre.clone(), encode(&[Frame::Ok])].concat(),               // a reply as a request
    ];
    for bytes in cases {
        let (_, frames) = exchange(&pki, &server, bytes.clone());
        assert!(matches!(&frames[..], [Frame::Error { code: ErrorCode::Protocol, .. }]), "{bytes:?} -> {frames:?}");
    }
    // Bad magic: not an xfer client at all; the server just closes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        w.flush().await.unwrap();
        assert!(r.read_preamble(Duration::from_secs(10)).await.is_err());
    });
    // A truncated frame followed by a close: nothing left behind.
    let (_, frames) = exchange(&pki, &server, [pre.clone(), encode(&[file("cut", 100), data(b"abc")])].concat());
    assert!(frames.is_empty(), "{frames:?}");
    assert!(server.wait_for_log("closed with error"));
    // The server still serves a normal client.
    work.write("f", b"fine");
    client(&pki, "client", work.path(), "push", &server, &["f"]).assert_code(0);
    assert_eq!(work.listing("root"), [".xfer", ".xfer/partial", ".xfer/tmp", "f"]);
}

/// FILTER: bad patterns are refused and the connection goes on; good ones
/// leave out what they match from the GETs that follow.
#[test]
fn a_filter_is_refused_when_invalid_and_applies_to_later_gets() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/d/a.txt", b"a");
    work.write("root/d/b.log", b"b");
    let filter = |p: &str| Frame::Filter { patterns: p.into() };
    let get = Frame::Get { path: WirePath::parse("d").unwrap() };
    let bytes = [xfer::protocol::preamble().to_vec(), encode(&[filter("a{b"), filter("*.log"), get])].concat();
    let (_, frames) = exchange(&pki, &server, bytes);
    assert!(
        matches!(&frames[0], Frame::Error { code: ErrorCode::BadPath, message } if message.contains("a{b")),
        "{frames:?}"
    );
    assert!(matches!(frames[1], Frame::Ok), "{frames:?}");
    // TOTAL counts what is sent: one file.
    assert!(matches!(frames[2], Frame::Total { files: 1, bytes: 1 }), "{frames:?}");
    let files: Vec<String> =
        frames.iter().filter_map(|f| if let Frame::File(h) = f { Some(h.path.to_string()) } else { None }).collect();
    assert_eq!(files, ["d/a.txt"], "{frames:?}");
}
