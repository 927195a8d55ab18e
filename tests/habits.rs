//! What scp and rsync users type, and what they are told: reflex flags
//! accepted, and a port that is not an xfer server named as such.

use std::io::{Read, Write};

use crate::support::*;

#[test]
fn scp_and_rsync_reflex_flags_are_accepted_and_z_is_explained() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("d/a.txt", b"a");
    for flags in [&["-r"][..], &["-R"], &["-rp"], &["-a"], &["-a", "-v", "-r"]] {
        let mut rest = flags.to_vec();
        rest.push("d");
        let run = client(&pki, "client", work.path(), "push", &server, &rest);
        run.assert_code(0);
        assert!(!run.stderr().contains("use '--"), "{run}");
    }
    let run = client(&pki, "client", work.path(), "pull", &server, &["-rpa", "d", "--out", "got"]);
    run.assert_code(0);
    assert_eq!(std::fs::read(work.join("got/d/a.txt")).unwrap(), b"a");
    let run = client(&pki, "client", work.path(), "push", &server, &["-z", "d"]);
    run.assert_code(0);
    assert!(run.stderr().contains("-z ignored: xfer does not compress"), "{run}");
    let run = client(&pki, "client", work.path(), "rm", &server, &["-R", "d"]);
    run.assert_code(0);
    assert!(!work.join("root/d").exists());
}

#[test]
fn a_port_where_something_else_listens_is_named_as_not_xfer() {
    let pki = Pki::new();
    let work = Dir::new();
    // An HTTP server: it answers the TLS hello with plain text.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let http = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let mut args = vec!["ls", &addr];
    let ids = pki.id_args("client");
    args.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &args, &[]);
    http.join().unwrap();
    run.assert_code(3);
    assert!(run.stderr().contains(&format!("the server at {addr} does not speak xfer")), "{run}");
    assert!(run.stderr().contains("right port"), "{run}");
    assert!(!run.stderr().contains("InvalidContentType"), "{run}");
}

/// The rate a `--json` push or pull reports in its summary, in MiB/s.
fn summary_rate(run: &Run) -> f64 {
    let summary = run.json().pop().expect("a summary");
    let bytes = summary["bytes"].as_f64().unwrap();
    bytes / summary["seconds"].as_f64().unwrap() / f64::from(1 << 20)
}

#[test]
fn bwlimit_holds_a_transfer_to_the_rate_asked_on_either_side() {
    let pki = Pki::new();
    let work = Dir::new();
    // 32 MiB at 16 MiB/s: two seconds a transfer, with room for a busy
    // machine to keep up with the rate.
    work.write("big.bin", &random_bytes(32 << 20, 3));
    let within = |rate: f64, what: &str, run: &Run| {
        assert!((16.0 * 0.85..=16.0 * 1.15).contains(&rate), "{what}: {rate:.1} MiB/s for --bwlimit 16M\n{run}");
    };
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let push = client(&pki, "client", work.path(), "push", &server, &["big.bin", "--bwlimit", "16M", "--json"]);
    push.assert_code(0);
    within(summary_rate(&push), "push", &push);
    let pull = client(
        &pki,
        "client",
        work.path(),
        "pull",
        &server,
        &["big.bin", "--out", "got", "--bwlimit", "16M", "--json"],
    );
    pull.assert_code(0);
    within(summary_rate(&pull), "pull", &pull);
    assert_eq!(std::fs::read(work.join("got/big.bin")).unwrap(), std::fs::read(work.join("big.bin")).unwrap());
    // The server's own limit, per connection.
    let limited = XferServer::start(&pki, &work.join("root2"), &["--bwlimit", "16M"]);
    let push = client(&pki, "client", work.path(), "push", &limited, &["big.bin", "--json"]);
    push.assert_code(0);
    within(summary_rate(&push), "serve --bwlimit", &push);
}

#[test]
fn ls_json_summary_counts_the_folders_listed() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/a/x", b"1");
    work.write("root/b/y", b"2");
    work.write("root/c.txt", b"3");
    let run = client(&pki, "client", work.path(), "ls", &server, &["--json"]);
    run.assert_code(0);
    let summary = run.json().pop().unwrap();
    assert_eq!((summary["ok"].as_u64(), summary["dirs"].as_u64()), (Some(3), Some(2)), "{run}");
}

#[test]
fn pull_json_names_where_each_file_was_written() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("root/x/d/a.txt", b"a");
    work.write("root/x/d/e/b.txt", b"b");
    for round in 0..2 {
        // The second time the files are there already: still named.
        let run = client(&pki, "client", work.path(), "pull", &server, &["x/d", "--out", "got", "--json"]);
        run.assert_code(0);
        let files: Vec<_> = run.json().into_iter().filter(|l| l["type"] == "file").collect();
        assert_eq!(files.len(), 2, "{run}");
        for f in files {
            let local = std::path::PathBuf::from(f["local"].as_str().unwrap_or_else(|| panic!("round {round}: {f}")));
            let remote = f["path"].as_str().unwrap();
            assert!(local.ends_with(remote.trim_start_matches("x/")), "{local:?} for {remote}");
            assert_eq!(std::fs::read(&local).unwrap(), std::fs::read(work.join(&format!("root/{remote}"))).unwrap());
        }
    }
}

#[test]
fn exclude_include_and_exclude_from_leave_out_what_they_match() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    for f in
        ["dist/app.js", "dist/app.js.map", "dist/keep.map", "dist/node_modules/x/y.js", "dist/tmp/t", "dist/sub/tmp/u"]
    {
        work.write(f, b"x");
    }
    work.write("ignore-list", b"# build litter\nnode_modules/\n/dist/tmp\n");
    let run = client(
        &pki,
        "client",
        work.path(),
        "push",
        &server,
        &["dist", "--to", "out", "--exclude", "*.map", "--include", "keep.map", "--exclude-from", "ignore-list"],
    );
    run.assert_code(0);
    let mut got = work.listing("root/out");
    got.sort();
    assert_eq!(
        got,
        ["dist", "dist/app.js", "dist/keep.map", "dist/sub", "dist/sub/tmp", "dist/sub/tmp/u"],
        "anchored /dist/tmp leaves dist/sub/tmp alone: {run}"
    );
    let run = client(&pki, "client", work.path(), "push", &server, &["dist", "--exclude-from", "missing"]);
    run.assert_code(2);
    assert!(run.stderr().contains("--exclude-from missing"), "{run}");
}

/// A pull's patterns go to the server, which leaves out what they match
/// (the sending side, as for a push); sync from a server protects what they
/// match from --delete, as rsync does.
#[test]
fn pull_cp_and_sync_from_a_server_honour_excludes_on_the_servers_side() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    for f in ["dist/app.js", "dist/app.js.map", "dist/keep.map", "dist/node_modules/x/y.js", "dist/tmp/t"] {
        work.write(&format!("root/x/{f}"), b"x");
    }
    let pats = ["--exclude", "*.map", "--include", "keep.map", "--exclude", "node_modules/", "--exclude", "/dist/tmp"];
    let mut args = vec!["x/dist", "--out", "got", "--json"];
    args.extend_from_slice(&pats);
    let run = client(&pki, "client", work.path(), "pull", &server, &args);
    run.assert_code(0);
    let mut got = work.listing("got");
    got.sort();
    assert_eq!(got, ["dist", "dist/app.js", "dist/keep.map"], "{run}");
    let summary = run.json().pop().unwrap();
    assert_eq!(summary["files"], 2, "nothing excluded is even reported: {run}");

    // The dry run shows the same choice without receiving anything.
    let mut args = vec!["x/dist", "--out", "dry", "-n"];
    args.extend_from_slice(&pats);
    let dry = client(&pki, "client", work.path(), "pull", &server, &args);
    dry.assert_code(0);
    assert!(dry.stderr().contains("would receive x/dist/app.js") && !dry.stderr().contains(".js.map"), "{dry}");

    // cp from a server takes them too.
    let from = format!("{}:x/dist", server.addr);
    let mut args = vec!["cp", from.as_str(), "copied/", "--exclude", "*.js"];
    let ids = pki.id_args("client");
    args.extend(ids.iter().map(String::as_str));
    run_in(work.path(), &args, &[]).assert_code(0);
    let mut got = work.listing("copied");
    got.sort();
    assert!(!got.iter().any(|p| p.ends_with(".js")) && got.contains(&"dist/keep.map".to_owned()), "{got:?}");

    // sync --delete from the server: an excluded local file is neither
    // replaced nor removed; an unexcluded extra one is removed.
    work.write("mirror/app.js.map", b"mine");
    work.write("mirror/stale.txt", b"old");
    let mut args = vec!["sync", from.as_str(), "mirror", "--delete", "--exclude", "*.map"];
    args.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(0);
    assert_eq!(std::fs::read(work.join("mirror/app.js.map")).unwrap(), b"mine", "{run}");
    assert!(!work.join("mirror/stale.txt").exists() && work.join("mirror/app.js").exists(), "{run}");
    assert!(!work.join("mirror/keep.map").exists(), "{run}");
}

#[test]
fn cp_copies_scp_style_either_way_with_or_without_a_new_name() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let at = |path: &str| format!("{}:{path}", server.addr); // HOST:PORT:PATH
    let cp = |args: &[&str]| {
        let mut all = vec!["cp"];
        all.extend_from_slice(args);
        let ids = pki.id_args("client");
        all.extend(ids.iter().map(String::as_str));
        run_in(work.path(), &all, &[])
    };
    work.write("dist/app.bin", b"app");
    work.write("dist/lib/x.so", b"lib");
    work.write("build.log", b"log");

    // Into a folder: a trailing slash, or several sources.
    cp(&["dist/", "build.log", &at("artifacts/")]).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/artifacts/dist/lib/x.so")).unwrap(), b"lib");
    assert_eq!(std::fs::read(work.join("root/artifacts/build.log")).unwrap(), b"log");
    // One file to a name without a slash: that name.
    cp(&["build.log", &at("logs/today.log")]).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/logs/today.log")).unwrap(), b"log");

    // No slash, as scp decides: a folder on the server takes the source
    // inside it; a new name becomes the source (a folder's contents).
    cp(&["build.log", &at("artifacts")]).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/artifacts/build.log")).unwrap(), b"log");
    cp(&["dist", &at("www")]).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/www/lib/x.so")).unwrap(), b"lib");
    assert!(!work.join("root/www/dist").exists());
    cp(&["dist", &at("www")]).assert_code(0); // www exists now: into it
    assert_eq!(std::fs::read(work.join("root/www/dist/app.bin")).unwrap(), b"app");
    let run = cp(&["dist", &at("logs/today.log")]);
    run.assert_code(2);
    assert!(run.stderr().contains("is a file on the server"), "{run}");

    // Back: into an existing folder, or to a new name (file or folder).
    std::fs::create_dir_all(work.join("got")).unwrap();
    cp(&[&at("artifacts/dist/app.bin"), "got"]).assert_code(0);
    assert_eq!(std::fs::read(work.join("got/app.bin")).unwrap(), b"app");
    cp(&[&at("artifacts/build.log"), "got/renamed.log"]).assert_code(0);
    assert_eq!(std::fs::read(work.join("got/renamed.log")).unwrap(), b"log");
    cp(&[&at("artifacts/dist"), "copy-of-dist"]).assert_code(0);
    assert_eq!(std::fs::read(work.join("copy-of-dist/lib/x.so")).unwrap(), b"lib");
    let mut left = work.listing("got");
    left.sort();
    assert_eq!(left, ["app.bin", "renamed.log"], "no temporary folder left");
    assert!(!work.listing("").iter().any(|n| n.starts_with(".xfer-cp")), "{:?}", work.listing(""));

    // Mistakes say what was meant.
    let run = cp(&["build.log", "got/"]);
    run.assert_code(2);
    assert!(run.stderr().contains("neither side is remote") && run.stderr().contains("HOST:PATH"), "{run}");
    let run = cp(&[&at("a"), &at("b")]);
    run.assert_code(2);
    assert!(run.stderr().contains("both sides are remote"), "{run}");
    let wrong = at("backups/");
    let mut args = vec!["push", "build.log", &wrong];
    let ids = pki.id_args("client");
    args.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(2);
    assert!(run.stderr().contains("looks like HOST:PATH") && run.stderr().contains("xfer cp"), "{run}");
}

#[test]
fn dry_run_lists_what_push_pull_and_rm_would_do_and_change_nothing() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("dist/a.txt", b"a");
    work.write("dist/sub/b.txt", b"b");
    let run = client(&pki, "client", work.path(), "push", &server, &["dist", "-n"]);
    run.assert_code(0);
    assert!(
        run.stderr().contains("would send dist/a.txt") && run.stderr().contains("would send dist/sub/b.txt"),
        "{run}"
    );
    assert!(
        run.stderr().contains("dry run: would push 2 files") && run.stderr().contains("nothing was changed"),
        "{run}"
    );
    // (The server's own staging area, .xfer, is not the user's.)
    let written: Vec<String> = work.listing("root").into_iter().filter(|p| !p.starts_with(".xfer")).collect();
    assert!(written.is_empty(), "a dry run wrote: {written:?}");

    client(&pki, "client", work.path(), "push", &server, &["dist"]).assert_code(0);
    work.write("dist/a.txt", b"changed");
    let run = client(&pki, "client", work.path(), "push", &server, &["dist", "--dry-run", "--json"]);
    run.assert_code(0);
    let lines = run.json();
    let status = |p: &str| lines.iter().find(|l| l["path"] == p).map(|l| l["status"].clone()).unwrap();
    assert_eq!((status("dist/a.txt"), status("dist/sub/b.txt")), ("would".into(), "skipped".into()), "{run}");
    assert_eq!(lines.last().unwrap()["dry_run"], true);
    assert_eq!(std::fs::read(work.join("root/dist/a.txt")).unwrap(), b"a", "the dry run sent nothing");

    let run = client(&pki, "client", work.path(), "rm", &server, &["dist", "-r", "-n"]);
    run.assert_code(0);
    assert!(run.stderr().contains("would remove dist"), "{run}");
    assert!(work.join("root/dist/sub/b.txt").exists());
    // Standard input cannot be dry-run: refused, nothing sent.
    let run = client(&pki, "client", work.path(), "push", &server, &["-", "--to", "dist/a.txt", "-n"]);
    run.assert_code(2);
    assert_eq!(std::fs::read(work.join("root/dist/a.txt")).unwrap(), b"a");

    // A pull's dry run compares with what --out holds, and writes nothing.
    work.write("got/dist/sub/b.txt", b"b");
    let same = std::fs::metadata(work.join("root/dist/sub/b.txt")).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(work.join("got/dist/sub/b.txt")).unwrap().set_modified(same).unwrap();
    let run = client(&pki, "client", work.path(), "pull", &server, &["dist", "--out", "got", "-n"]);
    run.assert_code(0);
    assert!(run.stderr().contains("would receive dist/a.txt (1 B)"), "{run}");
    assert!(!run.stderr().contains("sub/b.txt"), "same size and mtime: counted, not listed: {run}");
    assert!(run.stderr().contains("dry run: would pull 1 file") && run.stderr().contains("1 unchanged"), "{run}");
    assert!(!work.join("got/dist/a.txt").exists());
}

#[test]
fn sync_makes_a_folder_match_either_way_and_deletes_only_after_success() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let at = |path: &str| format!("{}:{path}", server.addr);
    let sync = |args: &[&str]| {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        let ids = pki.id_args("client");
        all.extend(ids.iter().map(String::as_str));
        run_in(work.path(), &all, &[])
    };
    work.write("site/index.html", b"v1");
    work.write("site/css/a.css", b"a");
    sync(&["site", &at("www")]).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/www/css/a.css")).unwrap(), b"a");

    // Gone from the source: removed with --delete (a dry run first only
    // says so); what --exclude matches is left alone.
    std::fs::remove_dir_all(work.join("site/css")).unwrap();
    work.write("root/www/old.html", b"old");
    work.write("root/www/cache.tmp", b"keep me");
    let run = sync(&["site", &at("www"), "--delete", "--exclude", "*.tmp", "-n"]);
    run.assert_code(0);
    assert!(
        run.stderr().contains("would remove www/css") && run.stderr().contains("would remove www/old.html"),
        "{run}"
    );
    assert!(work.join("root/www/css/a.css").exists(), "a dry run removed something");
    sync(&["site", &at("www"), "--delete", "--exclude", "*.tmp"]).assert_code(0);
    let mut left = work.listing("root/www");
    left.sort();
    assert_eq!(left, ["cache.tmp", "index.html"]);

    // From the server: the local folder is made to match.
    work.write("mirror/stale.txt", b"stale");
    sync(&[&at("www"), "mirror", "--delete"]).assert_code(0);
    let mut left = work.listing("mirror");
    left.sort();
    assert_eq!(left, ["cache.tmp", "index.html"]);

    // A link at the top of the source is not followed, as deeper ones are not.
    work.write("outside/secret.txt", b"secret");
    std::os::unix::fs::symlink(work.join("outside"), work.join("site/link")).unwrap();
    let run = sync(&["site", &at("www")]);
    run.assert_code(0);
    assert!(!work.join("root/www/link").exists() && run.stderr().contains("not followed"), "{run}");
    std::fs::remove_file(work.join("site/link")).unwrap();

    // A file where a folder is expected is refused, and nothing local goes.
    work.write("root/report.txt", b"r");
    work.write("mine/precious", b"p");
    let run = sync(&[&at("report.txt"), "mine", "--delete"]);
    run.assert_code(2);
    assert!(run.stderr().contains("is a file on the server"), "{run}");
    assert!(work.join("mine/precious").exists());

    // What an excluded folder holds is protected too.
    work.write("root/www/cache/deep/c1", b"c");
    sync(&["site", &at("www"), "--delete", "--exclude", "cache/", "--exclude", "*.tmp"]).assert_code(0);
    assert!(work.join("root/www/cache/deep/c1").exists(), "{:?}", work.listing("root/www"));

    // A failed transfer: nothing is removed.
    work.write("root/www/extra.html", b"x");
    work.write("site/big.bin", &[1; 4096]);
    let limited = XferServer::start(&pki, &work.join("root"), &["--max-size", "1K"]);
    let mut all = vec!["sync", "site"];
    let www = format!("{}:www", limited.addr);
    all.extend(["--delete", &www]);
    let ids = pki.id_args("client");
    all.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &all, &[]);
    run.assert_code(4);
    assert!(work.join("root/www/extra.html").exists(), "deleted after a failed transfer: {run}");
}

#[test]
fn sync_delete_without_delete_permission_is_refused_clearly() {
    let pki = Pki::new();
    let work = Dir::new();
    work.write("policy.toml", b"[[rule]]\npeer = \"client\"\nallow = [\"read\", \"write\"]\n");
    let policy = work.join("policy.toml").display().to_string();
    let server = XferServer::start(&pki, &work.join("root"), &["--policy", &policy]);
    work.write("site/a.txt", b"a");
    work.write("root/www/old.txt", b"old");
    let www = format!("{}:www", server.addr);
    let mut args = vec!["sync", "site", &www, "--delete"];
    let ids = pki.id_args("client");
    args.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(4);
    assert!(run.stderr().contains("may not delete"), "{run}");
    assert!(work.join("root/www/old.txt").exists() && work.join("root/www/a.txt").exists());
}

/// Review findings on excludes: a folder the source lacks is pruned around
/// what the patterns protect (both directions); cp of a folder to a new
/// name matches patterns as the user named it; too many patterns, or too
/// wild ones, are refused before they reach a server.
#[test]
fn excludes_protect_inside_removed_folders_and_match_as_named() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let ids = pki.id_args("client");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(ids.iter().map(String::as_str));
        run_in(work.path(), &all, &[])
    };
    work.write("root/d/a.txt", b"a");
    work.write("mirror/old/important.tmp", b"keep me");
    work.write("mirror/old/x", b"x");
    let from = format!("{}:d", server.addr);
    run(&["sync", &from, "mirror", "--delete", "--exclude", "*.tmp"]).assert_code(0);
    assert_eq!(std::fs::read(work.join("mirror/old/important.tmp")).unwrap(), b"keep me");
    assert!(!work.join("mirror/old/x").exists() && work.join("mirror/a.txt").exists());
    // The other way: the server's folder is pruned the same way.
    work.write("site/index.html", b"i");
    work.write("root/www/old/keep.tmp", b"server's");
    work.write("root/www/old/y", b"y");
    let to = format!("{}:www", server.addr);
    run(&["sync", "site", &to, "--delete", "--exclude", "*.tmp"]).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/www/old/keep.tmp")).unwrap(), b"server's");
    assert!(!work.join("root/www/old/y").exists());

    // cp of a folder to a new remote name: `site/conf/.env` as named.
    work.write("site/conf/.env", b"SECRET=1");
    let new = format!("{}:www1", server.addr);
    run(&["cp", "site", &new, "--exclude", "site/conf/.env"]).assert_code(0);
    assert!(work.join("root/www1/index.html").exists() && !work.join("root/www1/conf/.env").exists());

    // Limits on patterns, said before connecting.
    let many: Vec<String> = (0..65).flat_map(|i| ["--exclude".to_owned(), format!("p{i}")]).collect();
    let mut args = vec!["pull", server.addr.as_str(), "d"];
    args.extend(many.iter().map(String::as_str));
    let r = run(&args);
    r.assert_code(2);
    assert!(r.stderr().contains("at most 64 are taken"), "{r}");
    let r = run(&["pull", &server.addr, "d", "--exclude", "*a?????????c"]);
    r.assert_code(2);
    assert!(r.stderr().contains("wildcards"), "{r}");
}
