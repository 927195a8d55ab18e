//! Text a hostile peer controls never reaches a terminal or a log raw, and
//! secrets never reach either, whatever is wrong with them.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xfer::protocol::{ErrorCode, Frame, WirePath};

use crate::support::*;

const ESC: char = '\x1b';

#[test]
fn names_with_control_characters_are_refused_and_never_stored() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        for name in [&b"evil\x1b[2J.txt"[..], b"x\nxfer: pushed 1 file", b"bell\x07", b"c1\xc2\x9b31m"] {
            w.write_all(&raw_file_header(name, 2)).await.unwrap();
            w.write_all(&encode(&[Frame::Data(bytes::Bytes::from_static(b"hi")), Frame::End { blake3: [0; 32] }]))
                .await
                .unwrap();
        }
        w.write_all(&encode(&[Frame::List { path: WirePath::root() }])).await.unwrap();
        w.flush().await.unwrap();
        r.read_preamble(Duration::from_secs(10)).await.unwrap();
        for _ in 0..4 {
            match r.read_frame().await.unwrap() {
                Some(Frame::Error { code: ErrorCode::BadPath, message }) => {
                    assert!(message.contains("control characters"), "{message}");
                    assert!(!message.contains(ESC) && !message.contains('\n'), "{message:?}");
                }
                other => panic!("expected BAD_PATH, got {other:?}"),
            }
        }
        // The session went on, and nothing was stored.
        assert_eq!(r.read_frame().await.unwrap(), Some(Frame::Ok));
    });
    assert_eq!(work.listing("root").into_iter().filter(|p| !p.starts_with(".xfer")).count(), 0);
    assert!(!server.log().contains(ESC), "{}", server.log());
}

#[test]
fn a_hostile_servers_words_reach_the_terminal_escaped() {
    let pki = Pki::new();
    let work = Dir::new();
    let forged = "\x1b]0;owned\x07\x1b[2J\rxfer: pushed 1 file (0.0 MiB), verified with BLAKE3\n";
    let (addr, fake) = fake_server(&pki, move |(mut r, mut w)| async move {
        let _ = r.read_frame().await;
        w.write_all(&encode(&[Frame::Error { code: ErrorCode::Denied, message: forged.into() }])).await.unwrap();
        w.flush().await.unwrap();
    });
    let run = run_in(work.path(), &["ls", &addr, "--certs", &pki.certs().display().to_string()], &[]);
    fake.join().unwrap();
    assert_ne!(run.code(), 0, "{run}");
    let stderr = run.stderr();
    assert!(!stderr.contains(ESC) && !stderr.contains('\r') && !stderr.contains('\x07'), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "one line, nothing forged: {stderr:?}");
    assert!(stderr.contains("\\x1b]0;owned"), "{stderr:?}");
}

#[test]
fn a_certificate_subject_cannot_forge_server_log_lines() {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    // Self-signed, so refused; its subject is logged while refusing it.
    let mut params = CertificateParams::new(vec!["x".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "mallory\n2026-01-01T00:00:00Z  INFO forged: admitted\x1b[2J");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = xfer::tls::Identity::load(&xfer::IdentityPaths::in_dir(&pki.certs(), "client")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(ca.roots.clone())
            .with_client_auth_cert(vec![cert.der().clone()], key_der)
            .unwrap();
        cfg.alpn_protocols = vec![b"xfer/1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        let sni = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(sni, tcp).await.unwrap();
        let _ = tls.write_all(&xfer::protocol::preamble()).await;
        let _ = tls.read(&mut [0u8; 16]).await;
    });
    assert!(server.wait_for_log("client certificate refused"), "{}", server.log());
    let log = server.log();
    assert!(log.contains("mallory\\n2026"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")) && !log.contains(ESC), "{log}");
}

#[test]
fn malformed_or_empty_secrets_are_never_printed() {
    let pki = Pki::new();
    let work = Dir::new();
    let key = std::fs::read_to_string(pki.certs().join("client.key")).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let cases = [
        ("cut short", key[..key.len() - 40].to_owned()),
        ("no armour", body.clone()),
        ("bad base64", key.replace('A', "!")),
        ("no end line", key.lines().take(2).collect::<Vec<_>>().join("\n")),
    ];
    let certs = pki.certs().display().to_string();
    for (what, bad) in cases {
        let run = run_in(work.path(), &["ls", "127.0.0.1:1", "--certs", &certs], &[("XFER_KEY", &bad)]);
        assert_ne!(run.code(), 0, "{what}: {run}");
        let out = run.stdout() + &run.stderr();
        for chunk in body.as_bytes().chunks(12) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            assert!(!out.contains(chunk), "{what}: the key leaked ({chunk}): {out}");
        }
        assert!(out.contains("$XFER_KEY"), "{what}: {out}");
        assert!(!out.contains("[45, 45") && !out.contains("end_marker"), "{what}: {out}");
    }
    for var in ["XFER_KEY", "XFER_CERT", "XFER_CA"] {
        let run = run_in(work.path(), &["ls", "127.0.0.1:1", "--certs", &certs], &[(var, "")]);
        run.assert_code(2);
        assert!(run.stderr().contains(&format!("{var} is set but empty")), "{run}");
    }
}

/// A server that answers `LIST` of the root with `top`, records every
/// `OFFER`, and answers each `GET` with an empty `OK`.
fn offer_recorder(pki: &Pki, top: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use xfer::protocol::{ListEntry, Timestamp};
    fake_server(pki, move |(mut r, mut w)| async move {
        let mut offered = Vec::new();
        while let Ok(Some(frame)) = r.read_frame().await {
            let reply = match frame {
                Frame::List { .. } => {
                    let mut frames: Vec<Frame> = top
                        .iter()
                        .map(|n| {
                            let path = WirePath::parse(n).unwrap();
                            Frame::Entry(ListEntry { path, size: 1, mtime: Timestamp::default(), is_dir: false })
                        })
                        .collect();
                    frames.push(Frame::Ok);
                    frames
                }
                Frame::Offer(o) => {
                    offered.push(o.path.to_string());
                    vec![]
                }
                Frame::Get { .. } => vec![Frame::Ok],
                _ => vec![],
            };
            w.write_all(&encode(&reply)).await.unwrap();
            w.flush().await.unwrap();
        }
        offered.sort();
        offered
    })
}

#[test]
fn a_pull_offers_only_files_it_would_overwrite_and_no_dot_files() {
    let pki = Pki::new();
    let home = Dir::new();
    home.write(".ssh/id_ed25519", b"-----BEGIN OPENSSH PRIVATE KEY-----");
    home.write(".env", b"TOKEN=hunter2");
    home.write("notes.txt", b"mine alone");
    home.write("shared.txt", b"both have it");
    home.write("big.bin", &random_bytes(64 * 1024, 1));
    home.write("dist/app.bin", b"app");
    home.write("dist/.git/config", b"[core]");
    let certs = pki.certs().display().to_string();

    // `pull HOST .` into a home folder: only names the server's root
    // holds, and of those only files too large for their hash to be
    // matched against guesses (the server chose the names).
    let (addr, fake) = offer_recorder(&pki, vec!["shared.txt", "dist", ".env", "big.bin"]);
    let run = run_in(home.path(), &["pull", &addr, ".", "--certs", &certs, "--retry", "0"], &[]);
    let offered = fake.join().unwrap();
    assert_eq!(offered, ["big.bin"], "{run}");

    // `pull HOST dist`: only below dist, and not below its dot-folders.
    let (addr, fake) = offer_recorder(&pki, vec![]);
    let run = run_in(home.path(), &["pull", &addr, "dist", "--certs", &certs, "--retry", "0"], &[]);
    assert_eq!(fake.join().unwrap(), ["dist/app.bin"], "{run}");

    // Asking for a dot-folder by name offers what is in it.
    let (addr, fake) = offer_recorder(&pki, vec![]);
    let run = run_in(home.path(), &["pull", &addr, ".ssh", "--certs", &certs, "--retry", "0"], &[]);
    assert_eq!(fake.join().unwrap(), [".ssh/id_ed25519"], "{run}");
}

/// A server that answers the first `GET` with `answer` (raw bytes), then
/// closes.
fn answering(pki: &Pki, answer: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    fake_server(pki, move |(mut r, mut w)| async move {
        while let Ok(Some(frame)) = r.read_frame().await {
            if let Frame::Get { .. } = frame {
                // The client may stop reading (and close) early.
                let _ = w.write_all(&answer).await;
                let _ = w.flush().await;
                break;
            }
        }
    })
}

fn header(path: &str, size: u64) -> Frame {
    Frame::File(xfer::protocol::FileHeader::new(WirePath::parse(path).unwrap(), size, 0o644, Default::default()))
}

fn mib_of_data(n: usize) -> Vec<u8> {
    encode(&vec![Frame::Data(bytes::Bytes::from(vec![7u8; 1 << 20])); n])
}

#[test]
fn a_hostile_server_cannot_fill_the_clients_disk_or_leave_litter() {
    let pki = Pki::new();
    let work = Dir::new();
    let certs = pki.certs().display().to_string();
    let pull = |addr: &str, what: &str, extra: &[&str]| {
        let mut args = vec!["pull", addr, what, "--out", "got", "--certs", &certs, "--retry", "0", "--json"];
        args.extend_from_slice(extra);
        run_in(work.path(), &args, &[])
    };
    let largest_in = |dir: &str| -> u64 {
        let mut max = 0;
        for p in work.listing(dir) {
            max = max.max(std::fs::metadata(work.join(&format!("{dir}/{p}"))).map_or(0, |m| m.len()));
        }
        max
    };

    // A stream of unknown size that never ends: written up to --max-size.
    let mut answer = encode(&[header("a.txt", xfer::protocol::UNKNOWN_SIZE)]);
    answer.extend(mib_of_data(40));
    let (addr, fake) = answering(&pki, answer);
    let run = pull(&addr, "a.txt", &["--max-size", "8M"]);
    fake.join().unwrap();
    assert_ne!(run.code(), 0, "{run}");
    assert!(largest_in("got") <= 9 << 20, "the client wrote past --max-size: {:?}", work.listing("got"));
    assert!(!work.join("got/a.txt").exists());

    // Past --max-size, the rest of an endless stream is read only so far,
    // then the connection is given up.
    let (addr, fake) = fake_server(&pki, |(mut r, mut w)| async move {
        while let Ok(Some(frame)) = r.read_frame().await {
            if let Frame::Get { .. } = frame {
                let _ = w.write_all(&encode(&[header("e.bin", xfer::protocol::UNKNOWN_SIZE)])).await;
                let chunk = mib_of_data(8);
                for _ in 0..((2 * xfer::transfer::MAX_DRAIN) >> 23) {
                    if w.write_all(&chunk).await.is_err() {
                        return true; // the client hung up
                    }
                }
                return false;
            }
        }
        false
    });
    let run = pull(&addr, "e.bin", &["--max-size", "1M"]);
    assert!(fake.join().unwrap(), "the client read the endless stream to its end: {run}");
    assert!(run.stderr().contains("stopped reading a refused file"), "{run}");

    // A file announced just under the free space: refused before a byte
    // is written, the reserve named.
    let free = {
        let st = rustix::fs::statvfs(work.path()).unwrap();
        st.f_bavail * st.f_frsize
    };
    let mut answer = encode(&[header("b.bin", free - (1 << 20))]);
    answer.extend(encode(&[Frame::End { blake3: [0; 32] }, Frame::Ok]));
    let (addr, fake) = answering(&pki, answer);
    let run = pull(&addr, "b.bin", &[]);
    fake.join().unwrap();
    run.assert_code(4);
    assert!(run.stdout().contains("kept in reserve"), "{run}");
    assert!(!work.join("got/b.bin").exists());

    // More payload than announced: a protocol violation, and the partial
    // copy it started is not kept.
    let mut answer = encode(&[header("c.bin", 2 << 20)]);
    answer.extend(mib_of_data(3));
    let (addr, fake) = answering(&pki, answer);
    let run = pull(&addr, "c.bin", &[]);
    fake.join().unwrap();
    assert_ne!(run.code(), 0, "{run}");
    assert!(run.stderr().contains("more payload than"), "{run}");
    assert!(!work.join("got/.xfer").exists(), "litter: {:?}", work.listing("got"));

    // A file asked for must come as the whole answer: a folder of the same
    // name after it, or anything below it, is refused.
    let data = bytes::Bytes::from_static(b"hi");
    let blake3 = *blake3::hash(b"hi").as_bytes();
    let answer = encode(&[
        header("d.txt", 2),
        Frame::Data(data.clone()),
        Frame::End { blake3 },
        Frame::Dir { path: WirePath::parse("d.txt").unwrap(), mode: 0o755, mtime: Default::default() },
        header("d.txt/evil", 2),
        Frame::Data(data),
        Frame::End { blake3 },
        Frame::Ok,
    ]);
    let (addr, fake) = answering(&pki, answer);
    let run = pull(&addr, "d.txt", &[]);
    fake.join().unwrap();
    assert_ne!(run.code(), 0, "{run}");
    assert!(run.stderr().contains("after the file"), "{run}");
    assert!(!work.join("got/d.txt").is_dir(), "{:?}", work.listing("got"));
}

#[test]
fn a_hostile_server_cannot_fill_the_disk_with_folders_past_the_reserve() {
    if !can_unshare("a small filesystem for the pull") {
        return;
    }
    let pki = Pki::new();
    let work = Dir::new();
    let certs = pki.certs().display().to_string();
    // Folders deep enough that, all new, they need more than is left
    // above the reserve; then an empty file under new parents; then a
    // folder that already exists, which needs nothing.
    let deep: String = (0..40).map(|i| format!("f{i}")).collect::<Vec<_>>().join("/");
    let dir = |p: &str| Frame::Dir { path: WirePath::parse(p).unwrap(), mode: 0o755, mtime: Default::default() };
    let answer = encode(&[
        dir(&format!("d/{deep}")),
        header(&format!("d/{deep}/empty"), 0),
        Frame::End { blake3: *blake3::hash(b"").as_bytes() },
        dir("d"),
        Frame::Ok,
    ]);
    let (addr, fake) = answering(&pki, answer);
    // A 2 MiB filesystem (reserve: 5%, about 102 KiB), filled to 40 KiB
    // above the reserve: less than 41 new folders would need.
    let out = work.join("small");
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=2m tmpfs '{out}' && mkdir '{out}/got' && mkdir '{out}/got/d' \
         && head -c $((2048*1024 - 102*1024 - 40*1024)) /dev/zero > '{out}/filler' \
         && '{XFER}' pull {addr} d --out '{out}/got' --certs '{certs}' --retry 0 --json; \
         echo \"rc=$?\"; ls -R '{out}/got'",
        out = out.display()
    );
    let run = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    fake.join().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stdout.contains("rc=4"), "{stdout}\n{stderr}");
    assert!(stdout.contains("no room for its folders"), "{stdout}\n{stderr}");
    let listing = stdout.split("rc=4").nth(1).unwrap_or_default();
    assert!(listing.contains('d') && !listing.contains("f0"), "folders were created: {stdout}");
}

/// A total is announced first in an answer, once: a server sending one
/// after an item (to bend a client's bars or counts) is cut off.
#[test]
fn a_total_anywhere_but_first_is_a_protocol_error() {
    let pki = Pki::new();
    let work = Dir::new();
    // DIR first, then a TOTAL: not the first frame of the answer.
    let run = pull_from_fake(&pki, &work, vec![Frame::Total { files: 1, bytes: 1 << 50 }], &[]);
    run.assert_code(1);
    assert!(run.stderr().contains("protocol error") && run.stderr().contains("unexpected TOTAL"), "{run}");
}
