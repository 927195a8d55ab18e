//! Standard input and output: `push HOST - --to NAME`, `pull HOST NAME -`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

fn push_stdin(pki: &Pki, work: &Dir, server: &XferServer, data: &[u8], extra: &[&str]) -> Run {
    let mut cmd = Command::new(XFER);
    cmd.current_dir(work.path()).args(["push", &server.addr, "-"]).args(extra).args(pki.id_args("client"));
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    Run { cmd: format!("push {} - {}", server.addr, extra.join(" ")), out }
}

#[test]
fn standard_input_is_pushed_and_pulled_back_to_standard_output_verified() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let data = random_bytes(3 << 20, 21);
    let push = push_stdin(&pki, &work, &server, &data, &["--to", "backups/dir.tar", "--json"]);
    push.assert_code(0);
    let line = &push.json()[0];
    assert_eq!((line["path"].as_str(), line["size"].as_u64()), (Some("backups/dir.tar"), Some(3 << 20)), "{push}");
    assert_eq!(line["blake3"], blake3::hash(&data).to_hex().as_str());
    assert_eq!(std::fs::read(work.join("root/backups/dir.tar")).unwrap(), data);

    let pull = client(&pki, "client", work.path(), "pull", &server, &["backups/dir.tar", "-"]);
    pull.assert_code(0);
    assert!(pull.out.stdout == data, "stdout differs from the file");
    assert_eq!(pull.stderr(), "", "stderr must stay quiet on success");
}

#[test]
fn an_empty_standard_input_makes_an_empty_file() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    push_stdin(&pki, &work, &server, b"", &["--to", "empty"]).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/empty")).unwrap(), b"");
}

#[test]
fn stream_misuse_is_a_usage_error() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/d/f", b"x");
    push_stdin(&pki, &work, &server, b"data", &[]).assert_code(2);
    client(&pki, "client", work.path(), "pull", &server, &["d", "-"]).assert_code(2);
    client(&pki, "client", work.path(), "pull", &server, &["d/f", "d/f", "-"]).assert_code(2);
    client(&pki, "client", work.path(), "pull", &server, &["d/f", "-", "--json"]).assert_code(2);
    assert_eq!(work.listing("root"), [".xfer", ".xfer/partial", ".xfer/tmp", "d", "d/f"]);
}

#[test]
fn a_corrupted_stream_to_standard_output_exits_5() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start_with_env(&pki, &work.join("root"), &[], &[("XFER_FAULT_CORRUPT_PAYLOAD", "1")]);
    work.write("root/f", &random_bytes(10_000, 22));
    let pull = client(&pki, "client", work.path(), "pull", &server, &["f", "-"]);
    pull.assert_code(5);
    assert!(pull.stderr().contains("BLAKE3 mismatch") && pull.stderr().contains("discarded"), "{pull}");
}

#[test]
fn a_slow_producer_on_standard_input_does_not_trip_the_server_timeouts() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--header-timeout", "1s"]);
    let mut cmd = Command::new(XFER);
    cmd.current_dir(work.path()).args(["push", &server.addr, "-", "--to", "slow.txt"]).args(pki.id_args("client"));
    let mut child = cmd.stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello ").unwrap();
    stdin.flush().unwrap();
    // Longer than the server's header timeout: the header must already be out.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    stdin.write_all(b"world").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(work.join("root/slow.txt")).unwrap(), b"hello world");
}

#[test]
fn only_a_file_can_go_to_standard_output() {
    let pki = Pki::new();
    let work = Dir::new();
    work.write("root/a", b"AAA");
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let root = client(&pki, "client", work.path(), "pull", &server, &[".", "-"]);
    root.assert_code(2);
    assert!(root.out.stdout.is_empty(), "nothing may reach stdout");
}

#[test]
fn standard_input_shows_a_spinner_with_bytes_and_rate_not_an_empty_bar() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let data = random_bytes(3 << 20, 22);
    // --progress draws on a pipe; --bwlimit makes it last a few redraws.
    let push = push_stdin(&pki, &work, &server, &data, &["--to", "s.bin", "--progress", "--bwlimit", "2M"]);
    push.assert_code(0);
    let err = push.stderr();
    assert!(err.contains("s.bin") && err.contains("MiB/s"), "{push}");
    assert!(!err.contains("ETA") && !err.contains("/0 B") && !err.contains("1/0 files"), "{push}");
    assert!(err.contains("pushed 1 file (3.0 MiB)"), "{push}");
}

#[test]
fn progress_forces_bars_off_a_terminal_and_no_progress_hides_them_on_one() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("big.bin", &random_bytes(3 << 20, 23));
    let forced = client(&pki, "client", work.path(), "push", &server, &["big.bin", "--progress", "--bwlimit", "2M"]);
    forced.assert_code(0);
    assert!(forced.stderr().contains("big.bin [") && forced.stderr().contains("ETA"), "{forced}");
    let plain = client(&pki, "client", work.path(), "push", &server, &["big.bin", "--to", "again"]);
    assert!(!plain.stderr().contains("ETA"), "{plain}");

    // On a terminal (a pseudo-terminal from script(1)), bars unless --no-progress.
    let on_tty = |extra: &str| {
        let ids = pki.id_args("client").join(" ");
        let cmd = format!("{XFER} push {} big.bin --bwlimit 2M {ids} {extra}", server.addr);
        let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).current_dir(work.path()).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(on_tty("--to t1").contains("ETA"));
    let hidden = on_tty("--to t2 --no-progress");
    assert!(!hidden.contains("ETA") && hidden.contains("pushed 1 file"), "{hidden}");
}

#[test]
fn a_pull_shows_the_totals_the_server_announces_with_an_eta() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/d/a.bin", &random_bytes(2 << 20, 24));
    work.write("root/d/sub/b.bin", &random_bytes(1 << 20, 25));
    let args = ["d", "--out", "got", "--progress", "--bwlimit", "2M"];
    let pull = client(&pki, "client", work.path(), "pull", &server, &args);
    pull.assert_code(0);
    let err = pull.stderr();
    // Totals from the first redraw on: files done of 2, bytes of 3 MiB.
    assert!(err.contains("0/2 files") && err.contains("/3.00 MiB") && err.contains("ETA"), "{pull}");
    assert!(err.contains("pulled 2 files (3.0 MiB)"), "{pull}");
}
