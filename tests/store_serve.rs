//! `xfer serve --store`: servers that share one bucket of a real 3-node
//! Garage cluster, driven by the real client over real TLS on loopback.
//! What one server stored, the other serves, verified; an interrupted push
//! resumes through the other; a killed storage node loses nothing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xfer::partial::PartialId;
use xfer::protocol::{Timestamp, WirePath};

use crate::support::garage::Garage;
use crate::support::*;

const MIB: usize = 1 << 20;

/// `xfer serve --store s3://xfer/PREFIX` through Garage node `node`, with
/// the cluster's keys in its environment (and no CA bundle: the cluster
/// speaks plain HTTP on loopback).
fn serve_store(pki: &Pki, g: &Garage, prefix: &str, node: usize, extra: &[&str]) -> XferServer {
    let mut cmd = Command::new(XFER);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", &format!("s3://xfer/{prefix}")]);
    cmd.args(["--endpoint", &g.endpoint(node), "--region", "garage"]);
    cmd.args(pki.id_args("server")).args(extra);
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        cmd.env(k, &g.env[k]);
    }
    cmd.env_remove("RUST_LOG").env_remove("AWS_CA_BUNDLE").env_remove("AWS_ENDPOINT_URL");
    XferServer::spawn(cmd, Path::new(prefix))
}

fn spawn_client(pki: &Pki, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(XFER)
        .current_dir(cwd)
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

/// Waits (bounded) for a background client.
fn finish(child: Child, within: Duration) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => Run { cmd: format!("background client {pid}"), out: out.unwrap() },
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("client {pid} did not finish within {within:?}");
        }
    }
}

fn file_line(run: &Run) -> serde_json::Value {
    run.json().into_iter().find(|l| l["type"] == "file").unwrap_or_else(|| panic!("no file line: {run}"))
}

#[test]
fn what_one_server_stores_the_other_serves_verified_with_its_metadata() {
    let g = Garage::start();
    let pki = Pki::new();
    let work = Dir::new();
    let a = serve_store(&pki, &g, "ci", 1, &[]);
    let b = serve_store(&pki, &g, "ci", 2, &[]);
    let big = random_bytes(20 * MIB + 4321, 1);
    work.write("dist/app.bin", &big);
    work.write("dist/docs/readme.txt", b"read me\n");
    work.write("dist/empty", b"");
    work.write("dist/zzz", b""); // an empty file listed last
    std::fs::create_dir_all(work.join("dist/none")).unwrap();
    set_mtime(&work.join("dist/docs/readme.txt"), 1_600_000_000);
    client(&pki, "client", work.path(), "push", &a, &["dist"]).assert_code(0);

    // The big file through the other server (and another Garage node).
    let out = Dir::new();
    client(&pki, "client", out.path(), "pull", &b, &["dist/app.bin"]).assert_code(0);
    assert_eq!(std::fs::read(out.join("app.bin")).unwrap(), big);
    // The tree (listed through the node that took the writes: Garage's
    // listings through another node may lag them).
    client(&pki, "client", out.path(), "pull", &a, &["dist", "--out", "tree"]).assert_code(0);
    assert_eq!(std::fs::read(out.join("tree/dist/app.bin")).unwrap(), big);
    assert_eq!(std::fs::read(out.join("tree/dist/docs/readme.txt")).unwrap(), b"read me\n");
    assert_eq!(std::fs::read(out.join("tree/dist/empty")).unwrap(), b"");
    assert_eq!(std::fs::read(out.join("tree/dist/zzz")).unwrap(), b"");
    assert!(out.join("tree/dist/none").is_dir(), "the empty folder came too");
    assert_eq!(mtime_mode(&out.join("tree/dist/docs/readme.txt")).0, 1_600_000_000, "mtime kept");
    assert!(!out.join("tree/dist/.xfer-folder").exists() && !out.join("tree/dist/none/.xfer-folder").exists());
    // A folder below the top comes under its own name; --exclude applies.
    client(&pki, "client", out.path(), "pull", &a, &["dist/docs", "--out", "sub"]).assert_code(0);
    assert_eq!(std::fs::read(out.join("sub/docs/readme.txt")).unwrap(), b"read me\n");
    client(&pki, "client", out.path(), "pull", &a, &["dist", "--out", "some", "--exclude", "*.bin"]).assert_code(0);
    assert!(out.join("some/dist/docs/readme.txt").exists() && !out.join("some/dist/app.bin").exists());

    // As on a disk: a file never replaces a folder, nothing goes beneath a
    // file, and a folder never replaces a file.
    let w2 = Dir::new();
    w2.write("docs", b"a file where a folder is");
    let r = client(&pki, "client", w2.path(), "push", &a, &["docs", "--to", "dist"]);
    assert!(r.code() == 4 && r.stderr().contains("is a folder on the server"), "{r}");
    w2.write("app.bin/inner", b"beneath a file");
    let r = client(&pki, "client", w2.path(), "push", &a, &["app.bin", "--to", "dist"]);
    assert!(r.code() == 4 && r.stderr().contains("is a file on the server"), "{r}");
    client(&pki, "client", out.path(), "pull", &b, &["dist/app.bin", "--out", "still"]).assert_code(0);
    assert_eq!(std::fs::read(out.join("still/app.bin")).unwrap(), big);

    // `ls` shows the mtime as pushed, not the upload time.
    let ls = client(&pki, "client", work.path(), "ls", &a, &["dist/docs", "--json"]);
    let entry = ls.assert_code(0).json().into_iter().find(|l| l["path"] == "dist/docs/readme.txt");
    assert!(entry.is_some_and(|e| e["mtime"].to_string().contains("2020-09-13")), "{ls}");
    // An identical re-push, through the other server, sends nothing.
    let again = client(&pki, "client", work.path(), "push", &b, &["dist", "--json"]);
    let summary = again.assert_code(0).json().pop().unwrap();
    assert_eq!((summary["bytes"].as_u64(), summary["skipped"].as_u64()), (Some(0), Some(4)), "{again}");

    // xfer's own area is no peer's: not written, not listed, not pulled.
    client(&pki, "client", work.path(), "push", &a, &["dist/empty", "--to", ".xfer/partial/x"]).assert_code(4);
    let root = client(&pki, "client", work.path(), "ls", &a, &[]);
    assert!(!root.assert_code(0).stdout().contains(".xfer"), "{root}");
    // Links have no place in a bucket: refused, said so.
    work.write("lnk/file", b"x");
    std::os::unix::fs::symlink("file", work.join("lnk/link")).unwrap();
    let linked = client(&pki, "client", work.path(), "push", &a, &["lnk", "--links"]);
    assert!(linked.stderr().contains("no symbolic links"), "{linked}");

    // rm -r through one server; gone through both.
    client(&pki, "client", work.path(), "rm", &b, &["dist"]).assert_code(4);
    client(&pki, "client", work.path(), "rm", &b, &["-r", "dist"]).assert_code(0);
    let after = client(&pki, "client", out.path(), "pull", &b, &["dist/app.bin", "--out", "gone"]);
    assert_ne!(after.code(), 0, "{after}");
    let ls = client(&pki, "client", work.path(), "ls", &a, &[]);
    assert!(!ls.assert_code(0).stdout().contains("dist"), "{ls}");
}

#[test]
fn a_push_cut_with_its_server_resumes_through_the_other_server() {
    let g = Garage::start();
    let pki = Pki::new();
    let work = Dir::new();
    let mut a = serve_store(&pki, &g, "resume", 1, &[]);
    let b = serve_store(&pki, &g, "resume", 2, &[]);
    let data = random_bytes(40 * MIB + 77, 2);
    let file = work.write("big", &data);
    let slow = [("XFER_FAULT_SLOW_PAYLOAD", "40")];
    let push = spawn_client(&pki, work.path(), &["push", &a.addr, "big"], &slow);

    // Killed once the bucket holds a partial upload of two parts or more.
    let meta = std::fs::metadata(&file).unwrap();
    let mtime = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
    let mtime = Timestamp { secs: mtime.as_secs() as i64, nanos: mtime.subsec_nanos() };
    let id = PartialId::new("client", &WirePath::parse("big").unwrap(), data.len() as u64, mtime);
    let bucket = g.bucket("resume", 1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(bucket.partial(&id)).is_none_or(|r| r.offset < 16 * MIB as u64) {
        assert!(Instant::now() < deadline, "no partial upload appeared:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-KILL", &a.pid().to_string()]).status().unwrap();
    let cut = finish(push, Duration::from_secs(60));
    assert_eq!(cut.code(), 3, "a lost connection: {cut}");
    let _ = a.terminate();

    let run = client(&pki, "client", work.path(), "push", &b, &["big", "--json"]);
    run.assert_code(0);
    let line = file_line(&run);
    let from = line["resumed_from"].as_u64().unwrap();
    assert!(from >= 16 * MIB as u64, "resumed from the verified prefix: {run}");
    assert_eq!(line["bytes_sent"].as_u64().unwrap(), data.len() as u64 - from, "{run}");
    let out = Dir::new();
    client(&pki, "client", out.path(), "pull", &b, &["big"]).assert_code(0);
    assert_eq!(std::fs::read(out.join("big")).unwrap(), data);
    assert!(rt.block_on(bucket.partial(&id)).is_none(), "the partial upload became the file");
}

#[test]
fn concurrent_pushes_of_one_path_through_both_servers_leave_one_whole_version() {
    let g = Garage::start();
    let pki = Pki::new();
    let (w1, w2) = (Dir::new(), Dir::new());
    let a = serve_store(&pki, &g, "race", 1, &[]);
    let b = serve_store(&pki, &g, "race", 2, &[]);
    let (one, two) = (random_bytes(18 * MIB, 3), random_bytes(18 * MIB + 5, 4));
    w1.write("app.bin", &one);
    w2.write("app.bin", &two);
    let p1 = spawn_client(&pki, w1.path(), &["push", &a.addr, "app.bin"], &[]);
    let p2 = spawn_client(&pki, w2.path(), &["push", &b.addr, "app.bin"], &[]);
    let (r1, r2) = (finish(p1, Duration::from_secs(120)), finish(p2, Duration::from_secs(120)));
    // Garage may refuse one of two racing completions; one must succeed.
    assert!(r1.code() == 0 || r2.code() == 0, "{r1}\n{r2}");
    let out = Dir::new();
    client(&pki, "client", out.path(), "pull", &a, &["app.bin"]).assert_code(0);
    let got = std::fs::read(out.join("app.bin")).unwrap();
    assert!(got == one || got == two, "one whole version, never a mix ({} bytes)", got.len());
}

#[test]
fn a_push_survives_a_killed_storage_node() {
    let g = Garage::start();
    let pki = Pki::new();
    let work = Dir::new();
    let a = serve_store(&pki, &g, "node", 1, &[]);
    let data = random_bytes(256 * MIB, 5);
    work.write("big", &data);
    let push = spawn_client(&pki, work.path(), &["push", &a.addr, "big", "--retry", "3", "--json"], &[]);
    // Once the upload is under way, a node that holds a replica dies.
    std::thread::sleep(Duration::from_secs(2));
    g.kill(3);
    let run = finish(push, Duration::from_secs(300));
    run.assert_code(0);
    let out = Dir::new();
    client(&pki, "client", out.path(), "pull", &a, &["big"]).assert_code(0);
    assert!(std::fs::read(out.join("big")).unwrap() == data, "the same bytes after a node was lost");
}

#[test]
fn a_store_that_is_down_or_refuses_stops_serve_at_start_said_plainly() {
    let g = Garage::start();
    let pki = Pki::new();
    let serve = |store: &str, endpoint: &str, secret: &str| {
        let mut cmd = Command::new(XFER);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", store, "--endpoint", endpoint]);
        cmd.args(["--region", "garage"]).args(pki.id_args("server"));
        cmd.env("AWS_ACCESS_KEY_ID", &g.env["AWS_ACCESS_KEY_ID"]).env("AWS_SECRET_ACCESS_KEY", secret);
        cmd.env_remove("AWS_CA_BUNDLE").env_remove("AWS_ENDPOINT_URL").env_remove("RUST_LOG");
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let secret = g.env["AWS_SECRET_ACCESS_KEY"].clone();
    let (code, err) = serve("s3://xfer/x", "http://127.0.0.1:1", &secret);
    assert!(code != Some(0) && err.contains("did not answer"), "{err}");
    let (code, err) = serve("s3://no-such-bucket/x", &g.endpoint(1), &secret);
    assert!(code != Some(0) && err.contains("bucket does not exist"), "{err}");
    let (code, err) =
        serve("s3://xfer/x", &g.endpoint(1), "0000000000000000000000000000000000000000000000000000000000000000");
    assert!(code != Some(0) && err.contains("credentials were refused"), "{err}");
    assert!(!err.contains(&secret[..16]), "no secret in output");
    let (code, err) = serve("s3://Bad_Bucket", &g.endpoint(1), &secret);
    assert!(code == Some(2) && !err.is_empty(), "{err}");

    // A store that goes away while serving: the push fails (after the
    // store client's retries), said plainly, and the server goes on.
    let work = Dir::new();
    let mut a = serve_store(&pki, &g, "gone", 1, &[]);
    work.write("one.txt", b"one");
    client(&pki, "client", work.path(), "push", &a, &["one.txt"]).assert_code(0);
    g.kill(1);
    work.write("two.txt", b"two");
    let push = spawn_client(&pki, work.path(), &["push", &a.addr, "two.txt", "--retry", "0"], &[]);
    let run = finish(push, Duration::from_secs(120));
    assert!(![0, 3].contains(&run.code()) && run.stderr().contains("two.txt"), "{run}");
    assert!(!run.stderr().contains(&g.endpoint(1)), "the store's address stays the server's business: {run}");
    let ls = finish(spawn_client(&pki, work.path(), &["ls", &a.addr], &[]), Duration::from_secs(120));
    assert!(ls.code() != 0 && ls.stderr().contains("store"), "answered, with the reason: {ls}");
    assert!(a.terminate().is_some_and(|st| st.success()), "the server was still serving:\n{}", a.log());
}

#[test]
fn a_pull_cut_midway_resumes_from_the_bucket_and_a_read_only_server_refuses_writes() {
    let g = Garage::start();
    let pki = Pki::new();
    let work = Dir::new();
    let a = serve_store(&pki, &g, "pull", 1, &[]);
    let data = random_bytes(30 * MIB + 9, 6);
    work.write("b.bin", &data);
    client(&pki, "client", work.path(), "push", &a, &["b.bin"]).assert_code(0);

    // Cut after 12 MiB on the way back; the retry offers what arrived.
    let proxy = crate::resume::CuttingProxy::new(&a.addr, 12 * MIB as u64, true);
    let pull = spawn_client(&pki, work.path(), &["pull", &proxy.addr, "b.bin", "--out", "got", "--json"], &[]);
    let run = finish(pull, Duration::from_secs(120));
    run.assert_code(0);
    let line = file_line(&run);
    assert!(line["resumed_from"].as_u64().unwrap() > 0, "{run}");
    assert!(line["bytes_received"].as_u64().unwrap() < 2 * data.len() as u64, "{run}");
    assert_eq!(std::fs::read(work.join("got/b.bin")).unwrap(), data);

    // --read-only holds for a bucket too: reads yes, writes and removals no.
    let ro = serve_store(&pki, &g, "pull", 1, &["--read-only"]);
    work.write("new.txt", b"new");
    let refused = client(&pki, "client", work.path(), "push", &ro, &["new.txt"]);
    assert!(refused.code() == 4 && refused.stderr().contains("read-only"), "{refused}");
    client(&pki, "client", work.path(), "rm", &ro, &["b.bin"]).assert_code(4);
    client(&pki, "client", work.path(), "pull", &ro, &["b.bin", "--out", "ro"]).assert_code(0);
    assert_eq!(std::fs::read(work.join("ro/b.bin")).unwrap(), data);
}
