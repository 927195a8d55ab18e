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
