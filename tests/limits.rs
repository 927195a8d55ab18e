//! What hostile or greedy peers can make a server hold: handshakes of
//! peers without a certificate, sessions of one identity, memory for
//! offers. Each test plays that peer over real TCP/TLS, with a real client
//! as the positive control.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use xfer::protocol::{Frame, Offer, Timestamp, WirePath};

use crate::support::*;

/// Peak resident memory of a process, from /proc (MiB).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Lets this test process hold many sockets at once.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
}

#[test]
fn a_thousand_idle_sockets_do_not_lock_out_a_real_client() {
    raise_fd_limit();
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["-q"]);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);

    // 1,000 TCP connections that never start TLS, opened within a bound.
    let started = Instant::now();
    let mut idle = Vec::new();
    while idle.len() < 1000 && started.elapsed() < Duration::from_secs(20) {
        let addr = server.addr.parse().unwrap();
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            idle.push(s);
        }
    }
    assert_eq!(idle.len(), 1000, "opened within 20 s");

    let t = Instant::now();
    let ls = client(&pki, "client", work.path(), "ls", &server, &[]);
    let took = t.elapsed();
    ls.assert_code(0);
    eprintln!("ls behind 1,000 idle sockets: {took:?}");
    assert!(took < Duration::from_secs(2), "ls took {took:?} behind 1,000 idle sockets");
    drop(idle);
}

/// A raw session as `name` that asks for `file` and never reads: the server
/// blocks writing to it and keeps its slot until the socket closes.
async fn stalled_pull(pki: &Pki, name: &str, server: &XferServer, file: &str) -> Raw {
    let (r, mut w) = raw_connect(pki, name, server).await;
    w.write_all(&xfer::protocol::preamble()).await.unwrap();
    w.write_all(&encode(&[Frame::Get { path: WirePath::parse(file).unwrap() }])).await.unwrap();
    w.flush().await.unwrap();
    (r, w)
}

#[test]
fn one_identity_cannot_take_every_connection_slot() {
    let pki = Pki::new();
    pki.issue(&["runner-7"]);
    let work = Dir::new();
    work.write("root/big", &random_bytes(32 << 20, 9));
    let server = XferServer::start(
        &pki,
        &work.join("root"),
        &["--max-conns-per-peer", "2", "--header-timeout", "1s", "--idle-timeout", "30s"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let held = rt.block_on(async {
        vec![stalled_pull(&pki, "client", &server, "big").await, stalled_pull(&pki, "client", &server, "big").await]
    });
    assert!(server.wait_for_log("connected"), "{}", server.log());

    // A third session of the same identity waits briefly, then is refused
    // as busy (exit 3; a transient failure clients retry).
    let third = client(&pki, "client", work.path(), "ls", &server, &[]);
    third.assert_code(3);
    assert!(third.stderr().contains("'client' already has 2 connections open"), "{third}");
    // Another identity is served meanwhile.
    client(&pki, "runner-7", work.path(), "ls", &server, &[]).assert_code(0);
    // Once the greedy sessions end, the identity is served again.
    drop(held);
    drop(rt);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
}

/// Offers with ~4 KiB paths, each distinct.
fn long_offers(n: usize, tag: usize) -> Vec<u8> {
    let component = "o".repeat(250);
    let mut frames = Vec::new();
    for i in 0..n {
        let mut path = format!("{tag}-{i}");
        while path.len() + 251 <= 4000 {
            path = format!("{path}/{component}");
        }
        let path = WirePath::parse(&path).unwrap();
        let offer = Offer { path, size: 1 << 30, mtime: Timestamp::default(), offset: 0, prefix: [0; 32] };
        Frame::Offer(offer).encode(&mut frames);
    }
    frames
}

#[test]
fn an_offer_flood_is_cut_off_and_server_memory_stays_bounded() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["-q"]);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
    let before = peak_rss_mib(server.pid());

    // Two connections, each offering 65,536 paths of 4 KiB (256 MiB each
    // if the server kept them all), sent in batches while the server reads.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refusals = rt.block_on(async {
        let mut tasks = Vec::new();
        for tag in 0..2 {
            let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
            tasks.push(tokio::spawn(async move {
                w.write_all(&xfer::protocol::preamble()).await.unwrap();
                let batch = long_offers(1024, tag);
                for _ in 0..64 {
                    if w.write_all(&batch).await.and(w.flush().await).is_err() {
                        break; // cut off, as it should be
                    }
                }
                let _ = r.read_preamble(Duration::from_secs(10)).await;
                match r.read_frame().await {
                    Ok(Some(Frame::Error { message, .. })) => message,
                    other => format!("{other:?}"),
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for message in &refusals {
        assert!(message.contains("OFFERs"), "the flooding connection is refused: {message}");
    }
    let peak = peak_rss_mib(server.pid());
    eprintln!("offer flood: server peak RSS {before} MiB before, {peak} MiB after");
    assert!(peak < 64, "server peak RSS {peak} MiB (was {before} MiB before the flood)");
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
}

/// Bytes the process has read so far (`rchar` of /proc/PID/io).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

#[test]
fn probes_hash_a_file_once_and_hashing_stops_when_the_client_leaves() {
    const SIZE: u64 = 64 << 20;
    let pki = Pki::new();
    let work = Dir::new();
    let data = random_bytes(SIZE as usize, 3);
    work.write("root/big", &data);
    // Sparse: costs no disk, but hashing it means reading 4 GiB.
    let huge = std::fs::File::create(work.join("root/huge")).unwrap();
    huge.set_len(4 << 30).unwrap();
    let server = XferServer::start(&pki, &work.join("root"), &["-q"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe = |path: &str, size: u64| Frame::Probe {
        path: WirePath::parse(path).unwrap(),
        size,
        mtime: Timestamp::default(),
    };

    // 1,024 probes of one 64 MiB file: every answer carries its hash, and
    // the server reads it once, not 1,024 times.
    let before = bytes_read(server.pid());
    rt.block_on(async {
        let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        w.write_all(&encode(&vec![probe("big", SIZE); 1024])).await.unwrap();
        w.flush().await.unwrap();
        r.read_preamble(Duration::from_secs(10)).await.unwrap();
        let want = *blake3::hash(&data).as_bytes();
        for i in 0..1024 {
            match r.read_frame().await.unwrap() {
                Some(Frame::Have(h)) => assert_eq!(h.complete, Some(want), "answer {i}"),
                other => panic!("answer {i}: {other:?}"),
            }
        }
    });
    let read = bytes_read(server.pid()) - before;
    eprintln!("1,024 probes of a 64 MiB file: server read {} MiB", read >> 20);
    assert!(read < 2 * SIZE, "1,024 probes made the server read {} MiB", read >> 20);

    // A probe of a 4 GiB file, then the client leaves at once: the server
    // stops reading soon after, well short of the whole file.
    let before = bytes_read(server.pid());
    rt.block_on(async {
        let (_r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        w.write_all(&encode(&[probe("huge", 4 << 30), probe("huge", 4 << 30)])).await.unwrap();
        w.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    drop(rt);
    let mut last = bytes_read(server.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = bytes_read(server.pid());
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let read = last - before;
    eprintln!("probe of a 4 GiB file, client gone: server read {} MiB", read >> 20);
    assert!(read < 2 << 30, "the server went on reading after the client left: {} MiB", read >> 20);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
}

/// A raw OFFER frame with any path bytes (the library cannot build one with
/// a bad path).
fn raw_offer(path: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(path.len() as u16).to_be_bytes());
    body.extend_from_slice(path);
    body.extend_from_slice(&[0; 8 + 12 + 8 + 32]);
    let mut frame = vec![0x05];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn bad_offers_count_against_the_offer_bounds_and_are_logged_once() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(async {
        let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        let bad = raw_offer(&[b"x\x1b".repeat(2000).as_slice(), b"/y"].concat());
        let batch: Vec<u8> = std::iter::repeat_n(bad.as_slice(), 256).flatten().copied().collect();
        for _ in 0..64 {
            if w.write_all(&batch).await.and(w.flush().await).is_err() {
                break; // cut off, as it should be
            }
        }
        let _ = r.read_preamble(Duration::from_secs(10)).await;
        r.read_frame().await
    });
    match answer {
        Ok(Some(Frame::Error { message, .. })) => assert!(message.contains("OFFERs"), "{message}"),
        other => panic!("the bad offers must count: {other:?}"),
    }
    assert_eq!(server.log().matches("ignored an offer").count(), 1, "{}", server.log());
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
}

#[test]
fn refusals_of_unauthenticated_peers_are_rate_limited_in_the_log() {
    let pki = Pki::new();
    let other = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    // Trusts the server's CA, presents a certificate of another CA.
    let trusting = xfer::tls::Identity::load(&xfer::IdentityPaths::in_dir(&pki.certs(), "client")).unwrap();
    let foreign = xfer::tls::Identity::load(&xfer::IdentityPaths::in_dir(&other.certs(), "client")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(trusting.roots.clone())
        .with_client_auth_cert(foreign.chain.clone(), foreign.key.clone_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"xfer/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..100 {
            let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
            let sni = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            if let Ok(mut tls) = connector.connect(sni, tcp).await {
                let _ = tls.write_all(&xfer::protocol::preamble()).await;
                let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 8]).await;
            }
        }
    });
    let secs = started.elapsed().as_secs() + 1;
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
    let refused = server.log().matches("client certificate refused").count() as u64;
    assert!(refused > 0 && refused <= 10 * (secs + 1), "{refused} lines in {secs} s:\n{}", server.log());
}

#[test]
fn probing_a_partial_copy_again_does_not_hash_it_again() {
    const SIZE: usize = 48 << 20;
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["-q"]);
    let data = random_bytes(SIZE, 5);
    work.write("big", &data);
    // Leave a partial copy of at least 32 MiB (the push is killed).
    let mut push = std::process::Command::new(XFER)
        .current_dir(work.path())
        .args(["push", &server.addr, "big", "--retry", "0"])
        .args(pki.id_args("client"))
        .env("XFER_FAULT_SLOW_PAYLOAD", "20")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_staged_data(&partials(&work.join("root")), 32 << 20);
    let _ = push.kill();
    let _ = push.wait();
    let mtime = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(work.join("big")).unwrap();
        Timestamp { secs: m.mtime(), nanos: m.mtime_nsec() as u32 }
    };
    // 20 probes of it, each followed by a LIST so none share a batch: the
    // copy is claimed and hashed once.
    let before = bytes_read(server.pid());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        let probe = Frame::Probe { path: WirePath::parse("big").unwrap(), size: SIZE as u64, mtime };
        r.read_preamble(Duration::from_secs(10)).await.unwrap();
        for i in 0..20 {
            w.write_all(&encode(&[probe.clone(), Frame::List { path: WirePath::root() }])).await.unwrap();
            w.flush().await.unwrap();
            match r.read_frame().await.unwrap() {
                Some(Frame::Have(h)) => assert!(h.offset >= 32 << 20, "probe {i} offers the copy: {h:?}"),
                other => panic!("probe {i}: {other:?}"),
            }
            while !matches!(r.read_frame().await.unwrap(), Some(Frame::Ok)) {}
        }
    });
    let read = bytes_read(server.pid()) - before;
    eprintln!("20 probes of a partial copy: server read {} MiB", read >> 20);
    assert!(read < 2 * SIZE as u64, "the server read {} MiB for 20 probes", read >> 20);
}
