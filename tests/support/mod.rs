//! Shared fixtures: a real PKI made by `xfer keygen`, a real server process
//! on 127.0.0.1:0, and a runner for the real binary that prints everything
//! useful when an assertion fails.

#![allow(dead_code)]

#[cfg(feature = "s3")]
pub mod garage;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const XFER: &str = env!("CARGO_BIN_EXE_xfer");

/// A scratch folder per test, removed at the end.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir { tmp: tempfile::Builder::new().prefix("xfer-test-").tempdir().unwrap() }
    }
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    /// Creates a file (and its parents) with `data`.
    pub fn write(&self, p: &str, data: &[u8]) -> PathBuf {
        let path = self.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        path
    }
    /// Every path below `sub`, sorted, for failure messages and checks.
    pub fn listing(&self, sub: &str) -> Vec<String> {
        let mut out = Vec::new();
        list_into(&self.join(sub), &self.join(sub), &mut out);
        out.sort();
        out
    }
}

fn list_into(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.strip_prefix(base).unwrap().display().to_string());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            list_into(base, &p, out);
        }
    }
}

/// Deterministic pseudo-random bytes (BLAKE3 in XOF mode).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// A CA plus `server` and `client` identities, made by `xfer keygen`.
pub struct Pki {
    pub dir: Dir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = Dir::new();
        let out = run_in(dir.path(), &["keygen", "--dir", "certs"], &[]);
        out.assert_code(0);
        Pki { dir }
    }
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }
    /// Issues more client certificates from the same CA.
    pub fn issue(&self, names: &[&str]) {
        let mut args = vec!["keygen", "--dir", "certs"];
        args.extend_from_slice(names);
        run_in(self.dir.path(), &args, &[]).assert_code(0);
    }
    /// Issues more server certificates from the same CA.
    pub fn issue_server(&self, names: &[&str]) {
        let mut args = vec!["keygen", "--dir", "certs", "--server"];
        args.extend_from_slice(names);
        run_in(self.dir.path(), &args, &[]).assert_code(0);
    }
    /// Issues NAME the way keygen did before certificates had one role:
    /// serverAuth and clientAuth, with the loopback names.
    pub fn issue_dual_use(&self, name: &str) {
        self.issue_dual_use_as(name, name);
    }

    /// [`Pki::issue_dual_use`], with the common name `cn` (files NAME.*).
    pub fn issue_dual_use_as(&self, name: &str, cn: &str) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
        let certs = self.certs();
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(certs.join("ca.pem")).unwrap(), ca_key).unwrap();
        let sans = vec![name.to_owned(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(certs.join(format!("{name}.pem")), cert.pem()).unwrap();
        let key_path = certs.join(format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    /// Identity flags for the named peer.
    pub fn id_args(&self, name: &str) -> Vec<String> {
        vec!["--certs".into(), self.certs().display().to_string(), "--name".into(), name.into()]
    }
}

/// A running `xfer serve`, killed on drop.
pub struct XferServer {
    child: Child,
    pub addr: String,
    pub root: PathBuf,
    log: Arc<Mutex<String>>,
}

impl XferServer {
    /// Starts a server for `pki`'s `server` identity on 127.0.0.1:0.
    pub fn start(pki: &Pki, root: &Path, extra: &[&str]) -> XferServer {
        Self::start_with_env(pki, root, extra, &[])
    }

    /// Starts a server that presents identity `name` (whatever its role).
    pub fn start_as(pki: &Pki, name: &str, root: &Path, extra: &[&str]) -> XferServer {
        let mut cmd = Command::new(XFER);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--root"]).arg(root);
        cmd.args(pki.id_args(name)).args(extra).env_remove("RUST_LOG");
        XferServer::spawn(cmd, root)
    }

    pub fn start_with_env(pki: &Pki, root: &Path, extra: &[&str], env: &[(&str, &str)]) -> XferServer {
        let mut cmd = Command::new(XFER);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--root"]).arg(root);
        cmd.args(pki.id_args("server")).args(extra);
        cmd.env_remove("RUST_LOG").envs(env.iter().copied());
        XferServer::spawn(cmd, root)
    }

    /// Runs a prepared `serve` command and waits for its `listening on`.
    pub fn spawn(mut cmd: Command, root: &Path) -> XferServer {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn xfer serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on ") {
                    let addr = line[i + 13..].split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or("");
                    let addr = addr.to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not report 'listening on'; log:\n{}", log.lock().unwrap());
            }
        };
        XferServer { child, addr, root: root.to_owned(), log }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for XferServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

/// The result of one `xfer` run, with everything needed to explain a failure.
pub struct Run {
    pub cmd: String,
    pub out: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    #[track_caller]
    pub fn assert_code(&self, want: i32) -> &Run {
        assert_eq!(self.code(), want, "unexpected exit code\n{self}");
        self
    }
    /// Parses stdout as JSON Lines.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{self}")))
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.cmd,
            self.out.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Runs `xfer ARGS` in `cwd` with extra environment variables.
pub fn run_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(XFER);
    cmd.current_dir(cwd).args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    for k in ["XFER_CERTS", "XFER_NAME", "XFER_CERT", "XFER_KEY", "XFER_CA", "XFER_CONFIG"] {
        cmd.env_remove(k);
    }
    // The per-user config folder (certs/, config.toml) is the test's own,
    // never the developer's.
    cmd.env("XDG_CONFIG_HOME", cwd.join(".config"));
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run xfer");
    Run { cmd: format!("(cd {}) xfer {}", cwd.display(), args.join(" ")), out }
}

/// Runs a client command against `server` as identity `name`.
pub fn client(pki: &Pki, name: &str, cwd: &Path, op: &str, server: &XferServer, rest: &[&str]) -> Run {
    client_env(pki, name, cwd, op, server, rest, &[])
}

pub fn client_env(
    pki: &Pki,
    name: &str,
    cwd: &Path,
    op: &str,
    server: &XferServer,
    rest: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let ids = pki.id_args(name);
    let mut args: Vec<&str> = vec![op, &server.addr];
    args.extend(rest.iter().copied());
    args.extend(ids.iter().map(String::as_str));
    run_in(cwd, &args, env)
}

/// Modification time (seconds) and permission bits of a file.
pub fn mtime_mode(p: &Path) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.mtime(), m.mode() & 0o777)
}

/// Sets a file's mtime to a fixed past instant.
pub fn set_mtime(p: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
}

/// A raw protocol session: frames are read with the library's reader and
/// written as bytes the test encodes itself (so it can send anything).
pub type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
pub type Raw = (xfer::connection::FrameReader<tokio::io::ReadHalf<RawTls>>, tokio::io::WriteHalf<RawTls>);

/// Opens a real mutual-TLS session as `name`; nothing is sent yet.
pub async fn raw_connect(pki: &Pki, name: &str, server: &XferServer) -> Raw {
    let ids = xfer::IdentityPaths::in_dir(&pki.certs(), name);
    let id = xfer::tls::Identity::load(&ids).unwrap();
    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let sni = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(id.client_config().unwrap()).connect(sni, tcp).await.unwrap();
    let (r, w) = tokio::io::split(tls);
    (xfer::connection::FrameReader::new(r, "server", Duration::from_secs(20)), w)
}

/// Encodes frames back to back.
pub fn encode(frames: &[xfer::protocol::Frame]) -> Vec<u8> {
    let mut buf = Vec::new();
    for f in frames {
        f.encode(&mut buf);
    }
    buf
}

/// Hand-encodes a FILE header whose path the library would refuse to build.
pub fn raw_file_header(path: &[u8], size: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(path.len() as u16).to_be_bytes());
    body.extend_from_slice(path);
    body.extend_from_slice(&size.to_be_bytes());
    body.extend_from_slice(&0u64.to_be_bytes()); // offset
    body.extend_from_slice(&0o644u32.to_be_bytes());
    body.extend_from_slice(&[0; 12]);
    let mut frame = vec![0x01];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Starts `xfer push SERVER FILE` in the background (stderr captured).
pub fn spawn_push(pki: &Pki, work: &Dir, server: &XferServer, file: &str) -> Child {
    Command::new(XFER)
        .current_dir(work.path())
        .args(["push", &server.addr, file])
        .args(pki.id_args("client"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until a file in `dir` (a staging or partial folder)
/// holds at least `min` bytes, i.e. a transfer is that far along.
pub fn wait_for_staged_data(dir: &Path, min: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let enough =
        || std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| e.metadata().is_ok_and(|m| m.len() >= min));
    while !enough() {
        assert!(Instant::now() < deadline, "no transfer reached {min} bytes in {}", dir.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The partial-copy folder of a server root.
pub fn partials(root: &Path) -> std::path::PathBuf {
    root.join(".xfer/partial")
}

/// The server half of a fake server's session: frames in, raw bytes out.
pub type FakeTls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
pub type FakeSession = (xfer::connection::FrameReader<tokio::io::ReadHalf<FakeTls>>, tokio::io::WriteHalf<FakeTls>);

/// A fake server for playing a hostile one: a real TLS endpoint on
/// 127.0.0.1:0 with the CA's `server` identity that takes one connection,
/// exchanges preambles, and hands the session to `play`. Returns the
/// address and a handle that yields what `play` returned.
pub fn fake_server<T, F, Fut>(pki: &Pki, play: F) -> (String, std::thread::JoinHandle<T>)
where
    T: Send + 'static,
    F: FnOnce(FakeSession) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    use tokio::io::AsyncWriteExt;
    let id = xfer::tls::Identity::load(&xfer::IdentityPaths::in_dir(&pki.certs(), "server")).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config().unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let (r, mut w) = tokio::io::split(tls);
            let mut r = xfer::connection::FrameReader::new(r, "client", Duration::from_secs(10));
            r.read_preamble(Duration::from_secs(10)).await.unwrap();
            w.write_all(&xfer::protocol::preamble()).await.unwrap();
            let out = play((r, w)).await;
            // Let the client read to the end before the socket goes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            out
        })
    });
    (addr, handle)
}

/// A hostile server answering every `GET` with a folder `d` followed by
/// `after` (then `OK`), and a pull of `d` from it with `extra` flags.
pub fn pull_from_fake(pki: &Pki, work: &Dir, after: Vec<xfer::protocol::Frame>, extra: &[&str]) -> Run {
    use xfer::protocol::{Frame, Timestamp, WirePath};
    let (addr, fake) = fake_server(pki, move |(mut r, mut w)| async move {
        use tokio::io::AsyncWriteExt;
        while let Ok(Some(frame)) = r.read_frame().await {
            // It accepts a FILTER, and ignores it.
            if let Frame::Filter { .. } = frame {
                w.write_all(&encode(&[Frame::Ok])).await.unwrap();
            }
            if let Frame::Get { .. } = frame {
                let dir = Frame::Dir { path: WirePath::parse("d").unwrap(), mode: 0o755, mtime: Timestamp::default() };
                let frames: Vec<Frame> = std::iter::once(dir).chain(after.iter().cloned()).chain([Frame::Ok]).collect();
                w.write_all(&encode(&frames)).await.unwrap();
                w.flush().await.unwrap();
            }
        }
    });
    let certs = pki.certs().display().to_string();
    let mut args = vec!["pull", &addr, "d", "--out", "got", "--certs", &certs, "--retry", "0"];
    args.extend_from_slice(extra);
    let run = run_in(work.path(), &args, &[]);
    fake.join().unwrap();
    run
}

/// Whether this machine lets an unprivileged process make a user and mount
/// namespace (for a small or separate filesystem in a test); says so when
/// it does not, so the skip is never silent.
pub fn can_unshare(what: &str) -> bool {
    let ok = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: this machine cannot make a user namespace (unshare) for {what}");
    }
    ok
}

/// A server started inside a user and mount namespace of its own, after
/// `mount` (a shell command) ran there; `/proc/PID/root` shows its view.
pub fn serve_unshared(pki: &Pki, root: &Path, mount: &str) -> XferServer {
    let script = format!(
        "{mount} && exec '{XFER}' serve --listen 127.0.0.1:0 --root '{root}' {ids}",
        root = root.display(),
        ids = pki.id_args("server").join(" ")
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", &script]).env_remove("RUST_LOG");
    XferServer::spawn(cmd, root)
}
