//! Server life cycle: garbage on the port, graceful shutdown on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

#[test]
fn plaintext_http_and_random_bytes_are_refused_at_tls_and_the_server_goes_on() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let junk: [&[u8]; 3] =
        [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"XFER\x00\x01 hello in plaintext", &random_bytes(4096, 9)];
    for bytes in junk {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        // Whatever came back (a TLS alert, or nothing) is not file data.
        assert!(!String::from_utf8_lossy(&buf).contains("XFER"));
    }
    assert!(server.wait_for_log("refused before TLS completed"), "{}", server.log());
    work.write("f", b"still serving");
    client(&pki, "client", work.path(), "push", &server, &["f"]).assert_code(0);
    assert!(!server.log().contains("panicked"));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let pki = Pki::new();
    let work = Dir::new();
    let mut server = XferServer::start(&pki, &work.join("root"), &["--grace", "2s"]);
    work.write("f", b"x");
    client(&pki, "client", work.path(), "push", &server, &["f"]).assert_code(0);
    let status = server.terminate().expect("server exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());
    assert_eq!(work.listing("root/.xfer/tmp"), Vec::<String>::new());
}

#[test]
fn sigterm_lets_a_transfer_in_flight_finish() {
    let pki = Pki::new();
    let work = Dir::new();
    let mut server = XferServer::start(&pki, &work.join("root"), &["--grace", "20s"]);
    work.write("big", &random_bytes(64 << 20, 5));
    let mut push = spawn_push(&pki, &work, &server, "big");
    // Once the file is being written, stop the server: the file in flight
    // must still complete.
    wait_for_staged_data(&partials(&work.join("root")), 1);
    let status = server.terminate().expect("server exits within the grace period");
    let push_status = push.wait().unwrap();
    let mut err = String::new();
    push.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(push_status.success(), "push: {err}\nserver:\n{}", server.log());
    assert!(status.success());
    assert_eq!(std::fs::read(work.join("root/big")).unwrap(), random_bytes(64 << 20, 5));
}

#[test]
fn sigterm_during_a_pull_stops_between_files_and_never_truncates_one() {
    let pki = Pki::new();
    let work = Dir::new();
    for i in 0..200 {
        work.write(&format!("root/tree/f{i:03}"), &random_bytes(512 << 10, 1000 + i));
    }
    let mut server = XferServer::start(&pki, &work.join("root"), &["--grace", "20s"]);
    let pull = std::process::Command::new(XFER)
        .current_dir(work.path())
        .args(["pull", &server.addr, "tree", "--out", "got"])
        .args(pki.id_args("client"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while work.listing("got/tree").len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the pull never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(server.terminate().expect("server stops").success());
    let out = pull.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Either the pull won the race, or it was told the server is stopping.
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("shutting down"), "{err}");
    }
    for name in work.listing("got/tree") {
        assert!(!name.starts_with(".xfer-"), "staging file left: {name}");
        let i: u64 = name[1..].parse().unwrap();
        assert_eq!(std::fs::read(work.join(&format!("got/tree/{name}"))).unwrap(), random_bytes(512 << 10, 1000 + i));
    }
}

#[test]
fn json_logs_give_one_object_per_line_with_the_file_fields() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--log-format", "json"]);
    work.write("f.txt", b"logged");
    client(&pki, "client", work.path(), "push", &server, &["f.txt"]).assert_code(0);
    assert!(server.wait_for_log("\"closed\""), "{}", server.log());
    let mut received = None;
    // Every line, the one announcing the port included.
    for (n, line) in server.log().lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if n == 0 {
            assert_eq!(v["listening"], server.addr.as_str(), "{v}");
            assert_eq!(v["message"], format!("listening on {}", server.addr), "{v}");
        }
        if v["message"] == "received" {
            received = Some(v);
        }
    }
    let v = received.expect("a 'received' line");
    assert_eq!(v["path"], "f.txt");
    assert_eq!(v["bytes"], 6);
    assert_eq!(v["blake3"], blake3::hash(b"logged").to_hex().as_str());
    assert_eq!(v["span"]["peer"], "client", "{v}");
}

#[test]
fn quiet_servers_still_announce_their_port() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["-q"]);
    work.write("f.txt", b"x");
    client(&pki, "client", work.path(), "push", &server, &["f.txt"]).assert_code(0);
    let log = server.log();
    assert!(log.starts_with("xfer: listening on 127.0.0.1:") && !log.contains("INFO"), "{log}");
}

/// A folder below the root that is another filesystem's mount point takes
/// pushes like any other (staged on its own filesystem), big and small.
#[test]
fn a_push_into_a_mount_point_below_the_root_is_installed() {
    if !can_unshare("a mount point") {
        return;
    }
    let pki = Pki::new();
    let work = Dir::new();
    let root = work.join("root");
    std::fs::create_dir_all(root.join("mnt")).unwrap();
    let server = serve_unshared(&pki, &root, &format!("mount -t tmpfs -o size=64m tmpfs '{}/mnt'", root.display()));
    let seen = std::path::PathBuf::from(format!("/proc/{}/root{}", server.pid(), root.display()));
    let big = random_bytes(3 << 20, 70);
    work.write("up/big.bin", &big);
    work.write("up/small.txt", b"small");
    client(&pki, "client", work.path(), "push", &server, &["up", "--to", "mnt"]).assert_code(0);
    assert!(std::fs::read(seen.join("mnt/up/big.bin")).unwrap() == big);
    assert_eq!(std::fs::read(seen.join("mnt/up/small.txt")).unwrap(), b"small");
    let left: Vec<_> = std::fs::read_dir(seen.join("mnt/up")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 2, "no temporary file left beside them: {left:?}");
}
