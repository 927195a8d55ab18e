//! Round trips through a real server: contents, metadata, layout, output.

use std::fs;

use crate::support::*;

#[test]
fn push_then_pull_round_trips_empty_tiny_and_large_files_byte_for_byte() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let files = [("empty", Vec::new()), ("one", vec![0x5a]), ("big.bin", random_bytes(10 << 20, 1))];
    for (name, data) in &files {
        work.write(&format!("src/{name}"), data);
    }
    let srcs: Vec<String> = files.iter().map(|(n, _)| work.join(&format!("src/{n}")).display().to_string()).collect();
    let mut args: Vec<&str> = srcs.iter().map(String::as_str).collect();
    args.push("--json");
    let push = client(&pki, "client", work.path(), "push", &server, &args);
    push.assert_code(0);

    for (name, data) in &files {
        assert_eq!(&fs::read(work.join(&format!("root/{name}"))).unwrap(), data, "server copy of {name}");
    }
    let lines = push.json();
    let big = lines.iter().find(|l| l["path"] == "big.bin").expect("a line for big.bin");
    assert_eq!(big["type"], "file");
    assert_eq!(big["status"], "ok");
    assert_eq!(big["size"], 10 << 20);
    assert_eq!(big["bytes_sent"], 10 << 20);
    assert_eq!(big["blake3"], blake3::hash(&files[2].1).to_hex().as_str());
    let summary = lines.last().unwrap();
    assert_eq!(
        (summary["type"].as_str(), summary["ok"].as_u64(), summary["failed"].as_u64()),
        (Some("summary"), Some(3), Some(0))
    );

    let pull =
        client(&pki, "client", work.path(), "pull", &server, &["empty", "one", "big.bin", "--out", "got", "--json"]);
    pull.assert_code(0);
    for (name, data) in &files {
        assert_eq!(&fs::read(work.join(&format!("got/{name}"))).unwrap(), data, "pulled copy of {name}");
    }
    let big = pull.json().into_iter().find(|l| l["path"] == "big.bin").unwrap();
    assert_eq!(big["bytes_received"], 10 << 20);
}

#[test]
fn trees_keep_layout_empty_folders_mtime_and_exec_bit_and_skip_symlinks() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let tool = work.write("src/dist/bin/tool", b"#!/bin/sh\necho hi\n");
    let doc = work.write("src/dist/doc/a/b/readme.txt", &random_bytes(70_000, 2));
    fs::create_dir_all(work.join("src/dist/empty/deeper")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", work.join("src/dist/link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&doc, fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&tool, 1_500_000_000);
    set_mtime(&doc, 1_400_000_000);

    let push = client(&pki, "client", work.path(), "push", &server, &["src/dist/", "--to", "x/y", "--json"]);
    push.assert_code(0);
    let skipped: Vec<_> = push.json().into_iter().filter(|l| l["status"] == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{push}");
    assert_eq!(skipped[0]["path"], "x/y/dist/link");
    assert!(
        !work.join("root/x/y/dist/link").exists() && fs::symlink_metadata(work.join("root/x/y/dist/link")).is_err()
    );
    assert!(work.join("root/x/y/dist/empty/deeper").is_dir());
    assert_eq!(mtime_mode(&work.join("root/x/y/dist/bin/tool")), (1_500_000_000, 0o755));
    assert_eq!(mtime_mode(&work.join("root/x/y/dist/doc/a/b/readme.txt")), (1_400_000_000, 0o640));

    // Pull the folder back: it lands as got/dist/..., metadata intact.
    let pull = client(&pki, "client", work.path(), "pull", &server, &["x/y/dist", "--out", "got", "--json"]);
    pull.assert_code(0);
    // JSON paths are remote paths, relative to the server's root.
    let paths: Vec<String> = pull.json().iter().filter_map(|l| l["path"].as_str().map(str::to_owned)).collect();
    assert_eq!(paths, ["x/y/dist/bin/tool", "x/y/dist/doc/a/b/readme.txt"], "{pull}");
    assert_eq!(fs::read(work.join("got/dist/doc/a/b/readme.txt")).unwrap(), fs::read(&doc).unwrap());
    assert_eq!(mtime_mode(&work.join("got/dist/bin/tool")), (1_500_000_000, 0o755));
    assert!(work.join("got/dist/empty/deeper").is_dir());
    assert!(fs::symlink_metadata(work.join("got/dist/link")).is_err());

    // A single file from inside the tree lands by its name.
    client(&pki, "client", work.path(), "pull", &server, &["x/y/dist/bin/tool", "--out", "one"]).assert_code(0);
    assert_eq!(fs::read(work.join("one/tool")).unwrap(), fs::read(&tool).unwrap());
}

#[test]
fn a_file_is_placed_by_its_name_and_replaced_atomically() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("a/b.txt", b"version one");
    client(&pki, "client", work.path(), "push", &server, &["a/b.txt"]).assert_code(0);
    assert_eq!(fs::read(work.join("root/b.txt")).unwrap(), b"version one");
    work.write("a/b.txt", b"version two, longer");
    client(&pki, "client", work.path(), "push", &server, &["a/b.txt", "--to", "x"]).assert_code(0);
    client(&pki, "client", work.path(), "push", &server, &["a/b.txt"]).assert_code(0);
    assert_eq!(fs::read(work.join("root/b.txt")).unwrap(), b"version two, longer");
    assert_eq!(fs::read(work.join("root/x/b.txt")).unwrap(), b"version two, longer");
    // Nothing is left in staging once transfers are done.
    assert_eq!(work.listing("root/.xfer/tmp"), Vec::<String>::new());
}

#[test]
fn ls_shows_size_iso_mtime_and_folders_and_hides_staging() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/dist/app.tar.gz", &[7u8; 1234]);
    set_mtime(&work.join("root/dist/app.tar.gz"), 1_700_000_000);
    fs::create_dir_all(work.join("root/dist/sub")).unwrap();

    let ls = client(&pki, "client", work.path(), "ls", &server, &["dist"]);
    ls.assert_code(0);
    let lines: Vec<String> = ls.stdout().lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(lines[0], "1234 2023-11-14T22:13:20Z app.tar.gz", "{ls}");
    assert!(lines[1].ends_with(" sub/"), "{ls}");

    let root = client(&pki, "client", work.path(), "ls", &server, &[]);
    root.assert_code(0);
    assert!(root.stdout().contains("dist/") && !root.stdout().contains(".xfer"), "{root}");

    let json = client(&pki, "client", work.path(), "ls", &server, &["dist", "--json"]);
    let entries = json.json();
    assert_eq!(entries[0]["type"], "entry");
    assert_eq!(entries[0]["path"], "dist/app.tar.gz");
    assert_eq!(entries[0]["size"], 1234);
    assert_eq!(entries[0]["mtime"], "2023-11-14T22:13:20Z");
    assert_eq!(entries[0]["dir"], false);
    assert_eq!(entries[1]["dir"], true);

    let missing = client(&pki, "client", work.path(), "ls", &server, &["nope"]);
    missing.assert_code(4);
    assert!(missing.stderr().contains("nope"), "{missing}");
}

#[test]
fn rm_removes_files_and_folders_only_with_r() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/build.log", b"log");
    work.write("root/dist/a", b"a");

    client(&pki, "client", work.path(), "rm", &server, &["build.log"]).assert_code(0);
    assert!(!work.join("root/build.log").exists());

    let refused = client(&pki, "client", work.path(), "rm", &server, &["dist"]);
    refused.assert_code(4);
    assert!(refused.stderr().contains("-r"), "{refused}");
    assert!(work.join("root/dist/a").exists());

    client(&pki, "client", work.path(), "rm", &server, &["-r", "dist", "--json"]).assert_code(0);
    assert!(!work.join("root/dist").exists());

    let missing = client(&pki, "client", work.path(), "rm", &server, &["ghost"]);
    missing.assert_code(4);
    assert!(missing.stderr().contains("ghost"), "{missing}");
}

#[test]
fn a_corrupted_push_is_detected_and_the_old_version_stays() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/f.bin", b"the old version");
    work.write("src/f.bin", &random_bytes(300_000, 3));
    let push = client_env(
        &pki,
        "client",
        work.path(),
        "push",
        &server,
        &["src/f.bin", "--json"],
        &[("XFER_FAULT_CORRUPT_PAYLOAD", "1")],
    );
    push.assert_code(5);
    let line = &push.json()[0];
    assert_eq!(line["status"], "failed");
    assert!(line["error"].as_str().unwrap().contains("BLAKE3 mismatch"), "{push}");
    assert_eq!(fs::read(work.join("root/f.bin")).unwrap(), b"the old version");
    assert_eq!(work.listing("root/.xfer/tmp"), Vec::<String>::new());
    // Positive control: the same push without the fault succeeds.
    client(&pki, "client", work.path(), "push", &server, &["src/f.bin"]).assert_code(0);
    assert_eq!(fs::read(work.join("root/f.bin")).unwrap(), fs::read(work.join("src/f.bin")).unwrap());
}

#[test]
fn a_corrupted_pull_is_detected_and_nothing_lands() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start_with_env(&pki, &work.join("root"), &[], &[("XFER_FAULT_CORRUPT_PAYLOAD", "1")]);
    work.write("root/f.bin", &random_bytes(50_000, 4));
    let pull = client(&pki, "client", work.path(), "pull", &server, &["f.bin", "--out", "got"]);
    pull.assert_code(5);
    assert!(pull.stderr().contains("BLAKE3 mismatch"), "{pull}");
    assert_eq!(work.listing("got"), Vec::<String>::new(), "no file and no temporary file");
}

#[test]
fn many_clients_at_once_all_succeed() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    for i in 0..8 {
        work.write(&format!("src{i}/f{i}.bin"), &random_bytes(1 << 20, 100 + i));
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (pki, work, server) = (&pki, &work, &server);
                s.spawn(move || client(pki, "client", work.path(), "push", server, &[&format!("src{i}/f{i}.bin")]))
            })
            .collect();
        for h in handles {
            h.join().unwrap().assert_code(0);
        }
    });
    for i in 0..8 {
        assert_eq!(fs::read(work.join(&format!("root/f{i}.bin"))).unwrap(), random_bytes(1 << 20, 100 + i));
    }
}

#[test]
fn thousands_of_pipelined_requests_do_not_deadlock() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    // More requests than the client lets run ahead unanswered (4096).
    let names: Vec<String> = (0..5000).map(|i| format!("missing-{i}")).collect();
    let mut args: Vec<&str> = names.iter().map(String::as_str).collect();
    args.push("--json");
    let run = client(&pki, "client", work.path(), "rm", &server, &args);
    run.assert_code(4);
    let summary = run.json().pop().unwrap();
    assert_eq!(summary["failed"], 5000, "{summary}");
}

#[test]
fn a_missing_source_is_a_usage_error_before_any_connection() {
    let work = Dir::new();
    let pki = Pki::new();
    // Nothing listens on this port: the local check must come first.
    let mut args = vec!["push", "127.0.0.1:9", "no-such-file"];
    let ids = pki.id_args("client");
    args.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(2);
    assert!(run.stderr().contains("no-such-file"), "{run}");
}

#[test]
fn ctrl_c_during_a_pull_keeps_only_a_partial_copy_which_the_next_pull_resumes() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let data = random_bytes(256 << 20, 7);
    work.write("root/big", &data);
    let mut pull = std::process::Command::new(XFER)
        .current_dir(work.path())
        .args(["pull", &server.addr, "big", "--out", "got", "--idle-timeout", "10s"])
        .args(pki.id_args("client"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_staged_data(&work.join("got/.xfer/partial"), 1 << 20);
    std::process::Command::new("kill").args(["-INT", &pull.id().to_string()]).status().unwrap();
    let status = pull.wait().unwrap();
    assert_eq!(status.code(), Some(130), "Ctrl-C exits 130, as shells expect");
    let left = work.listing("got");
    assert!(!left.contains(&"big".to_owned()), "nothing under the final name: {left:?}");
    assert_eq!(left.len(), 4, "the staging folder with one partial copy and its description: {left:?}");

    let run = client(&pki, "client", work.path(), "pull", &server, &["big", "--out", "got", "--json"]);
    run.assert_code(0);
    let line = &run.json()[0];
    let resumed_from = line["resumed_from"].as_u64().unwrap();
    assert!(resumed_from > 0, "{run}");
    assert_eq!(line["bytes_received"].as_u64().unwrap(), data.len() as u64 - resumed_from, "{run}");
    assert_eq!(std::fs::read(work.join("got/big")).unwrap(), data);
    assert_eq!(work.listing("got"), ["big"], "the staging folder is gone once empty");
}

#[test]
fn max_size_refuses_larger_files_naming_both_sizes() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--max-size", "1K"]);
    work.write("small", &[1; 1024]);
    work.write("big", &[2; 2048]);
    let run = client(&pki, "client", work.path(), "push", &server, &["small", "big", "--json"]);
    run.assert_code(4);
    let lines = run.json();
    assert_eq!(lines[0]["status"], "ok", "{run}");
    assert_eq!(lines[1]["status"], "failed", "{run}");
    let error = lines[1]["error"].as_str().unwrap();
    assert!(error.contains("2.00 KiB") && error.contains("1.00 KiB") && error.contains("--max-size"), "{error}");
    assert!(work.join("root/small").exists() && !work.join("root/big").exists());
    assert_eq!(work.listing("root/.xfer/tmp"), Vec::<String>::new());
}

#[test]
fn json_output_ends_with_a_summary_even_when_the_connection_fails() {
    let pki = Pki::new();
    let work = Dir::new();
    work.write("f", b"x");
    let mut args = vec!["push", "127.0.0.1:9", "f", "--json"];
    let ids = pki.id_args("client");
    args.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(3);
    let summary = run.json().pop().expect("a summary line");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["ok"], 0);
    assert_eq!(summary["error"]["class"], "connection", "{run}");
    assert_eq!(summary["error"]["exit_code"], 3, "{run}");
    assert!(summary["error"]["message"].as_str().unwrap().contains("cannot connect"), "{run}");
    assert!(summary.get("failures").is_none(), "one name for one count: {run}");
    // A failure before any connection (a usage error) ends with one too.
    let mut missing = vec!["push", "127.0.0.1:9", "no-such-file", "--json"];
    missing.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &missing, &[]);
    run.assert_code(2);
    let summary = run.json().pop().expect("a summary line");
    assert_eq!((summary["error"]["class"].as_str(), summary["error"]["exit_code"].as_u64()), (Some("usage"), Some(2)));
    // Without --json, the summary line claims nothing it did not do.
    let plain: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
    let run = run_in(work.path(), &plain, &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("push stopped before any file was pushed"), "{run}");
    assert!(!run.stderr().contains("verified"), "{run}");
}

#[test]
fn unchanged_files_are_counted_and_listed_only_with_v() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    for i in 0..20 {
        work.write(&format!("d/f{i}"), b"same");
    }
    client(&pki, "client", work.path(), "push", &server, &["d"]).assert_code(0);
    let again = client(&pki, "client", work.path(), "push", &server, &["d"]);
    again.assert_code(0);
    assert_eq!(again.stderr().lines().count(), 1, "only the summary: {again}");
    assert!(again.stderr().contains("pushed 0 files; 20 unchanged or skipped"), "{again}");
    let verbose = client(&pki, "client", work.path(), "push", &server, &["d", "-v"]);
    verbose.assert_code(0);
    assert_eq!(verbose.stderr().matches("already there with the same BLAKE3").count(), 20, "{verbose}");
}

#[test]
fn a_stream_cannot_be_pushed_to_a_folder_name() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let run = client(&pki, "client", work.path(), "push", &server, &["-", "--to", "backups/"]);
    run.assert_code(2);
    assert!(run.stderr().contains("names a folder") && run.stderr().contains("--to backups/stdin.bin"), "{run}");
    assert!(!work.join("root/backups").exists());
}

#[test]
fn a_long_file_after_a_short_one_does_not_starve_the_short_ones_reply() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("d/a", b"small");
    work.write("d/b", &random_bytes(256 << 20, 77));
    // The reply for `a` must not wait until `b` has arrived.
    let run = client(&pki, "client", work.path(), "push", &server, &["d", "--idle-timeout", "400ms"]);
    run.assert_code(0);
    assert_eq!(std::fs::read(work.join("root/d/a")).unwrap(), b"small");
}
