//! Resume, retries and faults: whatever dies when, a final name never holds
//! a partial or mixed file, and the next attempt sends only what is missing.
//! Transfers are slowed with the debug builds' `XFER_FAULT_SLOW_PAYLOAD`
//! hook (a pause after each 512 KiB read) so a test can strike mid-file.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

const MIB: usize = 1 << 20;

/// `xfer OP SERVER ARGS…` in the background, stdout and stderr captured.
fn spawn_client(pki: &Pki, cwd: &Path, op: &str, addr: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(XFER)
        .current_dir(cwd)
        .args([op, addr])
        .args(args)
        .args(pki.id_args("client"))
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a background client and returns what it said.
fn finish(child: Child) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            kill9(pid);
            panic!("client {pid} did not finish within 60 s");
        }
    };
    Run { cmd: format!("background client {pid}"), out }
}

fn kill9(pid: u32) {
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
}

fn serve_on(pki: &Pki, root: &Path, listen: &str, extra: &[&str]) -> XferServer {
    let mut cmd = Command::new(XFER);
    cmd.args(["serve", "--listen", listen, "--root"]).arg(root).args(pki.id_args("server")).args(extra);
    cmd.env_remove("RUST_LOG");
    XferServer::spawn(cmd, root)
}

/// The one `"type":"file"` line of a JSON run, and the summary.
fn file_and_summary(run: &Run) -> (serde_json::Value, serde_json::Value) {
    let lines = run.json();
    let files: Vec<_> = lines.iter().filter(|l| l["type"] == "file").cloned().collect();
    assert_eq!(files.len(), 1, "{run}");
    (files[0].clone(), lines.last().unwrap().clone())
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_push_killed_midway_is_resumed_by_the_next_run_and_sends_only_the_rest() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let data = random_bytes(32 * MIB, 11);
    work.write("big", &data);
    let slow = [("XFER_FAULT_SLOW_PAYLOAD", "30")];
    let push = spawn_client(&pki, work.path(), "push", &server.addr, &["big"], &slow);
    wait_for_staged_data(&partials(&work.join("root")), 4 * MIB as u64);
    kill9(push.id());
    let _ = finish(push);
    assert!(!work.join("root/big").exists(), "nothing under the final name");

    let run = client(&pki, "client", work.path(), "push", &server, &["big", "--json"]);
    run.assert_code(0);
    let (line, summary) = file_and_summary(&run);
    let resumed_from = u(&line["resumed_from"]);
    assert!(resumed_from >= 4 * MIB as u64, "{run}");
    assert_eq!(u(&line["bytes_sent"]), data.len() as u64 - resumed_from, "only the rest was sent: {run}");
    assert_eq!(summary["resumed"], 1, "{run}");
    assert_eq!(std::fs::read(work.join("root/big")).unwrap(), data);
    assert!(work.listing("root/.xfer/partial").is_empty(), "the partial copy became the file");
}

#[test]
fn a_server_killed_mid_write_never_shows_a_truncated_file_and_the_retry_completes() {
    let pki = Pki::new();
    let work = Dir::new();
    let root = work.join("root");
    let server = serve_on(&pki, &root, "127.0.0.1:0", &[]);
    let addr = server.addr.clone();
    let data = random_bytes(24 * MIB, 12);
    work.write("big", &data);
    let slow = [("XFER_FAULT_SLOW_PAYLOAD", "30")];
    let push = spawn_client(&pki, work.path(), "push", &addr, &["big", "--json", "--retry", "5"], &slow);
    wait_for_staged_data(&partials(&root), 4 * MIB as u64);
    kill9(server.pid());
    drop(server);
    assert!(!root.join("big").exists(), "a killed server leaves nothing under the final name");
    let _restarted = serve_on(&pki, &root, &addr, &[]);

    let run = finish(push);
    run.assert_code(0);
    let lines = run.json();
    assert!(lines.iter().any(|l| l["type"] == "retry"), "{run}");
    let (line, _) = file_and_summary(&run);
    assert_eq!(line["status"], "ok", "{run}");
    assert!(u(&line["resumed_from"]) > 0, "the retry continued the server's partial copy: {run}");
    assert!(u(&line["bytes_sent"]) < 2 * data.len() as u64, "{run}");
    assert_eq!(std::fs::read(root.join("big")).unwrap(), data);
}

/// A TCP proxy in front of `target` that cuts its first connection (both
/// sides) once `limit` bytes have crossed it in the direction chosen; later
/// connections pass untouched.
pub(crate) struct CuttingProxy {
    pub(crate) addr: String,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    pub(crate) fn new(target: &str, limit: u64, server_to_client: bool) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (target, stop2) = (target.to_owned(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut first = true;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(&target).unwrap();
                let limit = if std::mem::take(&mut first) { limit } else { u64::MAX };
                let (up_limit, down_limit) = if server_to_client { (u64::MAX, limit) } else { (limit, u64::MAX) };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), up_limit);
                pump(server, client, down_limit);
            }
        });
        CuttingProxy { addr, stop }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until `limit` bytes, then shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: u64) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = n.min(usize::try_from(limit - total).unwrap_or(usize::MAX));
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            total += n as u64;
            if total >= limit {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
fn a_connection_cut_mid_payload_is_reported_and_retry_completes_the_push_and_the_pull() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let (a, b) = (random_bytes(8 * MIB, 13), random_bytes(8 * MIB, 14));
    work.write("a.bin", &a);
    work.write("b.bin", &b);

    // Without retries, the cut is reported as a lost connection (exit 3).
    let proxy = CuttingProxy::new(&server.addr, 3 * MIB as u64, false);
    let run = run_in(
        work.path(),
        &[
            &["push", &proxy.addr, "a.bin", "--retry", "0"][..],
            &pki.id_args("client").iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
        &[],
    );
    run.assert_code(3);
    assert!(run.stderr().contains("lost") || run.stderr().contains("closed"), "{run}");
    assert!(!work.join("root/a.bin").exists());

    // With them, the same cut costs one reconnection and the rest of the file.
    let proxy = CuttingProxy::new(&server.addr, 3 * MIB as u64, false);
    let push = spawn_client(&pki, work.path(), "push", &proxy.addr, &["b.bin", "--json"], &[]);
    let run = finish(push);
    run.assert_code(0);
    assert!(run.json().iter().any(|l| l["type"] == "retry"), "{run}");
    let (line, _) = file_and_summary(&run);
    assert!(u(&line["resumed_from"]) > 0, "{run}");
    assert!(u(&line["bytes_sent"]) < 2 * b.len() as u64, "{run}");
    assert_eq!(std::fs::read(work.join("root/b.bin")).unwrap(), b);

    // A pull cut on its way back resumes the same way.
    let proxy = CuttingProxy::new(&server.addr, 3 * MIB as u64, true);
    let pull = spawn_client(&pki, work.path(), "pull", &proxy.addr, &["b.bin", "--out", "got", "--json"], &[]);
    let run = finish(pull);
    run.assert_code(0);
    let (line, _) = file_and_summary(&run);
    assert!(u(&line["resumed_from"]) > 0, "{run}");
    assert!(u(&line["bytes_received"]) < 2 * b.len() as u64, "{run}");
    assert_eq!(std::fs::read(work.join("got/b.bin")).unwrap(), b);
    assert_eq!(work.listing("got"), ["b.bin"]);

    // Without --json, the resumed file says where it resumed.
    let proxy = CuttingProxy::new(&server.addr, 3 * MIB as u64, true);
    let run = finish(spawn_client(&pki, work.path(), "pull", &proxy.addr, &["b.bin", "--out", "got2"], &[]));
    run.assert_code(0);
    assert!(run.stderr().contains("resumed b.bin at"), "{run}");
}

#[test]
fn a_source_rewritten_or_truncated_while_sent_is_never_installed() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let slow = [("XFER_FAULT_SLOW_PAYLOAD", "30")];
    for (name, change) in [("rewritten", "changed"), ("truncated", "shrank")] {
        let src = work.write(name, &random_bytes(16 * MIB, 15));
        let push = spawn_client(&pki, work.path(), "push", &server.addr, &[name, "--json"], &slow);
        wait_for_staged_data(&partials(&work.join("root")), 2 * MIB as u64);
        let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        if name == "truncated" {
            f.set_len(MIB as u64).unwrap();
        } else {
            f.write_all(&random_bytes(16 * MIB, 16)).unwrap();
        }
        drop(f);
        let run = finish(push);
        run.assert_code(1);
        let (line, _) = file_and_summary(&run);
        assert_eq!(line["status"], "failed", "{run}");
        assert!(line["error"].as_str().unwrap().contains(change), "{run}");
        assert!(!work.join("root").join(name).exists(), "a mixture was installed: {run}");
        // The server's disk writer deletes it once its queued blocks are
        // done, which may be just after the client heard of the failure.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !work.listing("root/.xfer/partial").is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(work.listing("root/.xfer/partial").is_empty(), "an abandoned file leaves no partial copy");
    }
}

#[test]
fn two_clients_pushing_one_path_at_once_leave_one_whole_version() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let versions = [random_bytes(8 * MIB, 17), random_bytes(8 * MIB, 18)];
    let slow = [("XFER_FAULT_SLOW_PAYLOAD", "10")];
    let pushes: Vec<Child> = versions
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let dir = format!("v{i}");
            work.write(&format!("{dir}/same.bin"), data);
            spawn_client(&pki, &work.join(&dir), "push", &server.addr, &["same.bin"], &slow)
        })
        .collect();
    for push in pushes {
        finish(push).assert_code(0);
    }
    let got = std::fs::read(work.join("root/same.bin")).unwrap();
    assert!(versions.contains(&got), "the result is a mix of both pushes");
    assert!(work.listing("root/.xfer/partial").is_empty());
    assert!(work.listing("root/.xfer/tmp").is_empty());
}

#[test]
fn files_the_receiver_already_holds_identical_are_skipped_without_payload() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("d/small", b"tiny");
    work.write("d/large", &random_bytes(2 * MIB, 19));
    client(&pki, "client", work.path(), "push", &server, &["d"]).assert_code(0);

    let again = client(&pki, "client", work.path(), "push", &server, &["d", "--json"]);
    again.assert_code(0);
    let lines = again.json();
    let files: Vec<_> = lines.iter().filter(|l| l["type"] == "file").collect();
    assert_eq!(files.len(), 2, "{again}");
    for f in files {
        assert_eq!(f["status"], "skipped", "{again}");
        assert_eq!(f["bytes_sent"], 0, "{again}");
        assert!(f["blake3"].is_string(), "{again}");
    }

    // A changed file is sent; the unchanged one still is not.
    work.write("d/small", b"TINY");
    let run = client(&pki, "client", work.path(), "push", &server, &["d", "--json"]);
    run.assert_code(0);
    let status = |r: &Run, p: &str| r.json().into_iter().find(|l| l["path"] == p).unwrap()["status"].clone();
    assert_eq!(status(&run, "d/small"), "ok", "{run}");
    assert_eq!(status(&run, "d/large"), "skipped", "{run}");
    assert_eq!(std::fs::read(work.join("root/d/small")).unwrap(), b"TINY");

    // Pulling into a folder that has the files already moves no payload.
    client(&pki, "client", work.path(), "pull", &server, &["d", "--out", "got"]).assert_code(0);
    let run = client(&pki, "client", work.path(), "pull", &server, &["d", "--out", "got", "--json"]);
    run.assert_code(0);
    assert_eq!(status(&run, "d/small"), "skipped", "{run}");
    assert_eq!(status(&run, "d/large"), "skipped", "{run}");
    assert_eq!(run.json().last().unwrap()["bytes"], 0, "{run}");
}

#[test]
fn partial_copies_nobody_resumes_expire_after_the_ttl() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--partial-ttl", "1s"]);
    work.write("big", &random_bytes(8 * MIB, 20));
    let push = spawn_client(&pki, work.path(), "push", &server.addr, &["big"], &[("XFER_FAULT_SLOW_PAYLOAD", "30")]);
    wait_for_staged_data(&partials(&work.join("root")), 2 * MIB as u64);
    kill9(push.id());
    let _ = finish(push);
    assert!(!work.listing("root/.xfer/partial").is_empty());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !work.listing("root/.xfer/partial").is_empty() {
        assert!(Instant::now() < deadline, "partial copy never expired: {:?}", work.listing("root/.xfer/partial"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.wait_for_log("deleted partial copies older than 1s"), "{}", server.log());
}

/// A server on a 5 MiB tmpfs, mounted in a user and mount namespace of its
/// own (no privileges needed where unprivileged user namespaces are on).
#[test]
fn a_full_disk_is_refused_up_front_or_cleaned_up_mid_write() {
    if !can_unshare("a small filesystem") {
        return;
    }
    let pki = Pki::new();
    let work = Dir::new();
    let root = work.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let server = serve_unshared(&pki, &root, &format!("mount -t tmpfs -o size=5m tmpfs '{}'", root.display()));
    // The server's view of its root, through its own mount namespace.
    let seen = std::path::PathBuf::from(format!("/proc/{}/root{}", server.pid(), root.display()));

    work.write("huge", &random_bytes(10 * MIB, 21));
    let run = client(&pki, "client", work.path(), "push", &server, &["huge"]);
    run.assert_code(4);
    assert!(run.stderr().contains("needs 10.00 MiB but only"), "both sizes are named: {run}");

    // Two 3 MiB files each fit the free space when they start, not together.
    let slow = [("XFER_FAULT_SLOW_PAYLOAD", "100")];
    let mut pushes = Vec::new();
    for i in 0..2 {
        let name = format!("f{i}");
        work.write(&name, &random_bytes(3 * MIB, 22 + i));
        pushes.push(spawn_client(&pki, work.path(), "push", &server.addr, &[&name, "--json"], &slow));
        if i == 0 {
            wait_for_staged_data(&seen.join(".xfer/partial"), MIB as u64);
        }
    }
    let runs: Vec<Run> = pushes.into_iter().map(finish).collect();
    let failed: Vec<&Run> = runs.iter().filter(|r| r.code() != 0).collect();
    let all: String = runs.iter().map(|r| r.to_string()).collect();
    assert_eq!(failed.len(), 1, "exactly one push runs out of space: {all}");
    failed[0].assert_code(4);
    assert!(failed[0].stdout().contains("No space left"), "the disk filled mid-write: {}", failed[0]);
    let names = std::fs::read_dir(&seen).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>();
    assert_eq!(names.len(), 2, "one file and the staging folder: {names:?}");
    for sub in [".xfer/tmp", ".xfer/partial"] {
        assert_eq!(std::fs::read_dir(seen.join(sub)).unwrap().count(), 0, "{sub} was not cleaned up");
    }
}

/// Interrupted pushes leave one partial copy per client and path, however
/// often the file changed, and no more than the client's quota in all.
#[test]
fn partial_copies_do_not_pile_up() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--partial-quota", "6M"]);
    let partials = partials(&work.join("root"));
    let slow = [("XFER_FAULT_SLOW_PAYLOAD", "50")];
    let interrupt = |name: &str, mtime: u64| {
        work.write(name, &random_bytes(4 * MIB, mtime));
        set_mtime(&work.join(name), mtime);
        let push = spawn_client(&pki, work.path(), "push", &server.addr, &[name, "--retry", "0"], &slow);
        // This push's own copy (its description names the path) has 1 MiB.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mine = || {
            std::fs::read_dir(&partials).into_iter().flatten().flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(".meta")
                    && std::fs::read_to_string(e.path()).is_ok_and(|m| m.contains(&format!("\"{name}\"")))
                    && std::fs::metadata(partials.join(n.trim_end_matches(".meta")))
                        .is_ok_and(|d| d.len() >= MIB as u64)
            })
        };
        while !mine() {
            assert!(Instant::now() < deadline, "no partial copy of {name}");
            std::thread::sleep(Duration::from_millis(5));
        }
        kill9(push.id());
        let _ = finish(push);
    };
    // The same path, five versions: one copy.
    for v in 0..5 {
        interrupt("moving.bin", 1_700_000_000 + v);
    }
    let data_files = || work.listing("root/.xfer/partial").into_iter().filter(|n| !n.ends_with(".meta")).count();
    assert_eq!(data_files(), 1, "{:?}", work.listing("root/.xfer/partial"));
    // Other paths: the quota (6 MiB) keeps at most what fits, oldest first.
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        interrupt(name, 1_700_000_100 + i as u64);
    }
    let held: u64 = std::fs::read_dir(&partials)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".meta"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(held <= 6 * MIB as u64 + 4 * MIB as u64, "{held} bytes of partial copies held");
    assert!(data_files() <= 3, "{:?}", work.listing("root/.xfer/partial"));
    // The newest is still resumed.
    let run = client(&pki, "client", work.path(), "push", &server, &["c.bin", "--json"]);
    run.assert_code(0);
    assert!(run.json()[0]["resumed_from"].as_u64().unwrap() > 0, "{run}");
}
