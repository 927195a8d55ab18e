//! Many clients at once, and peers that connect and then stall.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

/// Peak resident memory of a process, from /proc (kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn sixty_four_clients_push_then_pull_at_once_and_server_memory_stays_bounded() {
    const CLIENTS: u64 = 64;
    const SIZE: usize = 4 << 20;
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["-q"]);
    for i in 0..CLIENTS {
        work.write(&format!("src/f{i}.bin"), &random_bytes(SIZE, 500 + i));
    }
    let started = Instant::now();
    for op in ["push", "pull"] {
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    let (pki, work, server) = (&pki, &work, &server);
                    s.spawn(move || {
                        let file = format!("f{i}.bin");
                        let src = format!("src/{file}");
                        let out = format!("out{i}");
                        let args: Vec<&str> =
                            if op == "push" { vec![src.as_str()] } else { vec![file.as_str(), "--out", out.as_str()] };
                        client(pki, "client", work.path(), op, server, &args)
                    })
                })
                .collect();
            for r in runs {
                r.join().unwrap().assert_code(0);
            }
        });
    }
    for i in 0..CLIENTS {
        let want = random_bytes(SIZE, 500 + i);
        assert!(std::fs::read(work.join(&format!("root/f{i}.bin"))).unwrap() == want, "server copy {i}");
        assert!(std::fs::read(work.join(&format!("out{i}/f{i}.bin"))).unwrap() == want, "pulled copy {i}");
    }
    let peak_mb = peak_rss_kb(server.pid()) / 1024;
    eprintln!("64 pushes + 64 pulls of {} MiB in {:?}; server peak RSS {peak_mb} MiB", SIZE >> 20, started.elapsed());
    // Whole-file buffering would need 256 MiB for one batch; the server
    // streams through fixed buffers.
    assert!(peak_mb < 200, "server peak RSS {peak_mb} MiB");
}

#[test]
fn peers_that_connect_and_stall_are_dropped_and_logged() {
    let pki = Pki::new();
    let work = Dir::new();
    // The handshake budget leaves room for the test's own TLS clients below
    // on a loaded CI machine (debug builds, the whole suite in parallel).
    let server = XferServer::start(&pki, &work.join("root"), &["--handshake-timeout", "3s", "--header-timeout", "1s"]);
    let t0 = Instant::now();

    // 1. TCP only, no TLS handshake.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    assert!(server.wait_for_log("TLS handshake timed out after 3s"), "{}", server.log());

    // 2. A TLS session that never sends the preamble.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut r, _w) = raw_connect(&pki, "client", &server).await;
        assert!(r.read_preamble(Duration::from_secs(10)).await.is_err(), "the server must hang up");
    });
    assert!(server.wait_for_log("protocol preamble timed out after 1s"), "{}", server.log());

    // 3. A trickle: the first request, one byte every 200 ms.
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (_r, mut w) = raw_connect(&pki, "client", &server).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        w.flush().await.unwrap();
        let mut frame = Vec::new();
        xfer::protocol::Frame::List { path: xfer::protocol::WirePath::parse("some/long/path/name").unwrap() }
            .encode(&mut frame);
        for b in frame {
            if w.write_all(&[b]).await.and(w.flush().await).is_err() {
                break; // dropped, as it should be
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert!(server.wait_for_log("request header timed out after 1s"), "{}", server.log());

    // 4. A trickle inside a payload: each byte comes well within the idle
    // timeout, but the frame as a whole does not.
    let server2 = XferServer::start(&pki, &work.join("root2"), &["--idle-timeout", "1s"]);
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (_r, mut w) = raw_connect(&pki, "client", &server2).await;
        w.write_all(&xfer::protocol::preamble()).await.unwrap();
        w.write_all(&raw_file_header(b"slow", 1000)).await.unwrap();
        w.write_all(&[0x10, 0, 0, 3, 0xe8]).await.unwrap(); // DATA, 1000 bytes
        w.flush().await.unwrap();
        for _ in 0..100 {
            if w.write_all(&[7]).await.and(w.flush().await).is_err() {
                break; // dropped, as it should be
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert!(server2.wait_for_log("idle transfer timed out after 1s"), "{}", server2.log());
    assert!(work.listing("root2/.xfer/tmp").is_empty(), "the trickler's file was dropped");
    assert!(t0.elapsed() < Duration::from_secs(45));
    // Everyone else is still served.
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
}

#[test]
fn a_server_with_few_file_descriptors_still_takes_hundreds_of_small_files() {
    let pki = Pki::new();
    let work = Dir::new();
    for i in 0..600 {
        work.write(&format!("src/d{}/f{i}", i % 7), &random_bytes(512, i));
    }
    // Empty folders too: each waits for the group commit that makes it
    // durable, holding its descriptor until then.
    for i in 0..300 {
        std::fs::create_dir_all(work.join(&format!("src/empty/e{i}"))).unwrap();
    }
    // Group commit must not hold a descriptor per waiting file.
    let ids = pki.id_args("server").join(" ");
    let root = work.join("root");
    let script =
        format!("ulimit -Sn 64 -Hn 64 && exec {XFER} serve --listen 127.0.0.1:0 --root {} {ids}", root.display());
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &script]);
    let server = XferServer::spawn(cmd, &root);
    client(&pki, "client", work.path(), "push", &server, &["src"]).assert_code(0);
    for i in 0..600 {
        assert_eq!(std::fs::read(root.join(format!("src/d{}/f{i}", i % 7))).unwrap(), random_bytes(512, i));
    }
    for i in 0..300 {
        assert!(root.join(format!("src/empty/e{i}")).is_dir());
    }
}
