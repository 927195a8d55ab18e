//! The client: one mutually authenticated TLS connection to a server, and
//! the four operations over it (push, pull, list, remove).
//!
//! Every operation is pipelined: one future writes all requests (and file
//! payloads) while another reads the replies in order, so there is no round
//! trip per file. What to expect next travels from the writer to the reader
//! through a bounded channel, which also bounds how far ahead the writer may
//! run. Outcomes go to a [`Reporter`]; nothing here prints.

use std::future::Future;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::connection::{FrameReader, FrameWriter, Timeouts, with_timeout};
use crate::error::{Class, Error, Result};
use crate::progress::{FileReport, Reporter};
use crate::protocol::{ALPN, DEFAULT_PORT, ErrorCode, Frame, VERSION, WirePath};
use crate::throttle::Throttled;
use crate::tls::{self, Identity, IdentityPaths};
use crate::transfer::{self, FileOutcome};

mod answer;
mod dry_run;
mod offers;
mod pull;
mod push;
mod sync;

pub use sync::{RemoteKind, Tree, extra as extra_paths};

pub use offers::MIN_ROOT_OFFER;
use push::{Expect, hand_over, read_outcomes};
pub use push::{NO_LINKS, PushPlan, source_name};

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// DNS name or IP address of the server.
    pub host: String,
    pub port: u16,
    /// The name the server's certificate must carry, when not `host`.
    pub server_name: Option<String>,
    pub identity: IdentityPaths,
    pub timeouts: Timeouts,
    /// Largest file a pull accepts (besides the free-space reserve).
    pub max_size: Option<u64>,
    /// Most bytes a second each way (`--bwlimit`).
    pub bwlimit: Option<u64>,
    /// Send and make symbolic links as links (`--links`), when their
    /// target stays inside the tree.
    pub links: bool,
    /// A pulled link may lead anywhere inside the destination folder (a
    /// sync), not only inside the entry asked for.
    pub sync_tree: bool,
    /// Patterns the server leaves out of a pull (`--exclude`), sent as
    /// `FILTER` before the `GET`s.
    pub filter: Option<crate::walk::Filter>,
}

impl ClientConfig {
    /// A config for `HOST[:PORT]` (IPv6 as `[::1]:5001` or a bare `::1`).
    pub fn new(target: &str, identity: IdentityPaths) -> Result<ClientConfig> {
        let (host, port) = parse_target(target)?;
        Ok(ClientConfig {
            host,
            port,
            server_name: None,
            identity,
            timeouts: Timeouts::default(),
            max_size: None,
            bwlimit: None,
            links: false,
            sync_tree: false,
            filter: None,
        })
    }
}

/// Splits `HOST[:PORT]`.
pub fn parse_target(s: &str) -> Result<(String, u16)> {
    let bad = || Error::Usage(format!("invalid server '{s}': expected HOST or HOST:PORT (IPv6 as [::1]:5001)"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else if s.matches(':').count() > 1 {
        (s, None) // a bare IPv6 address
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => DEFAULT_PORT,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

type Tls = TlsStream<Throttled<TcpStream>>;

/// An open connection to a server.
pub struct Client {
    r: FrameReader<ReadHalf<Tls>>,
    w: FrameWriter<WriteHalf<Tls>>,
    cfg: ClientConfig,
    /// The server's name from its verified certificate: what partial
    /// downloads from it are filed under.
    server: String,
}

impl Client {
    /// Connects, completes the TLS handshake and queues the preamble.
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        let id = Identity::load(&cfg.identity)?;
        let connector = TlsConnector::from(id.client_config()?);
        let name = cfg.server_name.clone().unwrap_or_else(|| cfg.host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| Error::Usage(format!("'{name}' is not a valid DNS name or IP address")))?;
        let addr = if cfg.host.contains(':') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        let t = cfg.timeouts;
        let tcp = with_timeout("connect", t.connect, async {
            TcpStream::connect((cfg.host.as_str(), cfg.port))
                .await
                .map_err(|source| Error::Connect { addr: addr.clone(), source })
        })
        .await?;
        // Requests are batched by FrameWriter; Nagle would only add delay.
        let _ = tcp.set_nodelay(true);
        let tcp = Throttled::new(tcp, cfg.bwlimit);
        let tls = with_timeout("TLS handshake", t.handshake, async {
            connector
                .connect(server_name, tcp)
                .await
                .map_err(|source| explain(&cfg, Error::ConnectionLost { peer: addr.clone(), source }))
        })
        .await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            let why = "a TLS service for another protocol: it did not agree to the xfer/1 ALPN";
            return Err(Error::NotXfer { addr, why });
        }
        let certs = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
        let server = certs.map(|c| tls::cert_names(&c)).and_then(|n| n.into_iter().next()).unwrap_or(name);
        let (rd, wr) = tokio::io::split(tls);
        let mut w = FrameWriter::new(wr, addr.clone(), t.idle);
        w.queue_preamble();
        Ok(Client { r: FrameReader::new(rd, addr, t.idle), w, cfg, server })
    }

    /// Fetches one remote file and writes it to `out` (standard output) as it
    /// arrives. The BLAKE3 check can only come at the end: a mismatch is an
    /// integrity error after the bytes were written, and the caller must
    /// discard them (the exit code says so).
    pub async fn pull_to<W: tokio::io::AsyncWrite + Unpin + Send>(
        &mut self,
        remote: &WirePath,
        out: W,
        rep: &mut Reporter,
    ) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        let writer = async move {
            w.send(&Frame::Get { path: remote.clone() }).await?;
            w.flush().await
        };
        let reader = async {
            greet(r, cfg.timeouts.header).await?;
            let mut first = reply(r).await?;
            if let Frame::Total { .. } = first {
                first = reply(r).await?; // nothing to draw: output is the file
            }
            let h = match first {
                Frame::File(h) => h,
                Frame::Error { code, message } => return Err(refusal(remote.as_str(), code, message)),
                Frame::Dir { .. } => {
                    return Err(Error::Usage(format!(
                        "{remote} is a folder: only a file can be written to standard output"
                    )));
                }
                Frame::Skipped { reason, .. } => {
                    return Err(Error::Refused {
                        path: remote.to_string(),
                        code: ErrorCode::Denied,
                        message: format!("{remote}: not sent: {reason}"),
                    });
                }
                other => return Err(unexpected(r.peer(), &other)),
            };
            let meter = rep.meter().clone();
            let sink = Some(transfer::WriterSink(out));
            let outcome = transfer::receive_into(r, &h, sink, u64::MAX, &meter, blake3::Hasher::new()).await?;
            let report = match outcome {
                FileOutcome::Ok(got) => FileReport::ok(remote, got.size, &got.blake3),
                FileOutcome::Failed { code, message, bytes } => {
                    let class = if code == ErrorCode::Integrity { Class::Integrity } else { Class::Other };
                    let message = format!("{message}; the bytes already written to standard output must be discarded");
                    FileReport { size: h.size, bytes, ..FileReport::failed(remote, message, class) }
                }
                FileOutcome::PeerError { code, message } => {
                    // The server's ERROR ended the response already.
                    rep.file(refused_report(remote, code, message)?);
                    return Ok(());
                }
            };
            rep.file(report);
            // The response ends with OK after the one file.
            match reply(r).await? {
                Frame::Ok => Ok(()),
                other => Err(unexpected(r.peer(), &other)),
            }
        };
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Lists a folder (or one file) on the server.
    pub async fn list(&mut self, path: &WirePath, rep: &mut Reporter) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        let writer = async move {
            w.send(&Frame::List { path: path.clone() }).await?;
            w.flush().await
        };
        let reader = async {
            greet(r, cfg.timeouts.header).await?;
            loop {
                match reply(r).await? {
                    Frame::Entry(e) => rep.entry(&e),
                    Frame::Link { path, target } => rep.link_entry(&path, &target),
                    Frame::Ok => return Ok(()),
                    Frame::Error { code, message } => return Err(refusal(path.as_str(), code, message)),
                    other => return Err(unexpected(r.peer(), &other)),
                }
            }
        };
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Removes files (and folders, with `recursive`) on the server.
    pub async fn remove(&mut self, paths: &[WirePath], recursive: bool, rep: &mut Reporter) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        let (tx, mut rx) = mpsc::channel::<Expect>(4096);
        let writer = async move {
            for p in paths {
                w.send(&Frame::Remove { path: p.clone(), recursive }).await?;
                if !hand_over(&tx, w, Expect::Removed(p.clone())).await? {
                    break;
                }
            }
            w.flush().await
        };
        let reader = read_outcomes(r, &mut rx, cfg.timeouts.header, rep, None);
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Finishes an operation's result: when the connection broke under us,
    /// the server may have said why just before (shutting down, not
    /// admitted), which beats "broken pipe"; TLS errors are explained.
    async fn conclude<T>(&mut self, result: Result<T>) -> Result<T> {
        let e = match result {
            Ok(v) => return Ok(v),
            Err(e @ Error::ConnectionLost { .. }) => match self.server_reason().await {
                Some(reason) => reason,
                None => e,
            },
            Err(e) => e,
        };
        Err(explain(&self.cfg, e))
    }

    /// Reads what is left from the server, briefly, looking for an `Error`.
    async fn server_reason(&mut self) -> Option<Error> {
        let r = &mut self.r;
        let look = async {
            while let Ok(Some(f)) = r.read_frame().await {
                if let Frame::Error { code, message } = f {
                    return Some(refusal("", code, message));
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(1), look).await.ok().flatten()
    }

    /// Ends the session cleanly (TLS close_notify).
    pub async fn close(mut self) -> Result<()> {
        let within = self.cfg.timeouts.shutdown;
        let cfg = self.cfg.clone();
        self.w.shutdown(within).await.map_err(|e| explain(&cfg, e))
    }
}

/// Runs the writer and reader of one operation together. The reader's
/// result decides; if the writer fails first (the server hung up), the
/// reader gets a moment to read the server's reason, which is more useful
/// than "broken pipe".
async fn pipeline<T>(writer: impl Future<Output = Result<()>>, reader: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::pin!(writer, reader);
    tokio::select! {
        r = &mut reader => r,
        w = &mut writer => match w {
            Ok(()) => reader.await,
            Err(we) => match tokio::time::timeout(Duration::from_secs(2), reader).await {
                Ok(Err(re)) => Err(re),
                _ => Err(we),
            },
        },
    }
}

/// Reads the server's preamble.
async fn greet(r: &mut FrameReader<ReadHalf<Tls>>, within: Duration) -> Result<()> {
    let theirs = r.read_preamble(within).await?;
    if theirs != VERSION {
        return Err(Error::Version { peer: r.peer().to_owned(), ours: VERSION, theirs });
    }
    Ok(())
}

/// The next frame, where the server must send one.
async fn reply(r: &mut FrameReader<ReadHalf<Tls>>) -> Result<Frame> {
    r.read_frame().await?.ok_or_else(|| Error::ConnectionLost {
        peer: r.peer().to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection before answering",
        ),
    })
}

/// A server's `ERROR` about one item, as that item's failure; the classes
/// that concern the whole connection (not admitted, shutting down) end the
/// operation instead.
fn refused_report(path: &WirePath, code: ErrorCode, message: String) -> Result<FileReport> {
    let e = refusal(path.as_str(), code, message);
    // These come last before the server closes: they end the operation.
    if e.class() == Class::Connection || code == ErrorCode::Protocol {
        return Err(e);
    }
    Ok(FileReport::failed(path, e.to_string(), e.class()))
}

/// Turns a server's `Error` frame into an [`Error`] of the right class.
fn refusal(path: &str, code: ErrorCode, message: String) -> Error {
    match code {
        ErrorCode::NotAdmitted => Error::NotAdmitted(message),
        ErrorCode::Protocol => Error::Protocol { peer: "the server".to_owned(), message },
        // Server messages usually name the path already; don't say it twice.
        _ if message.starts_with(path) => Error::Refused { path: path.to_owned(), code, message },
        _ => Error::Refused { path: path.to_owned(), code, message: format!("{path}: {message}") },
    }
}

fn unexpected(peer: &str, f: &Frame) -> Error {
    Error::protocol(peer, format!("unexpected {} frame", f.name()))
}

/// Replaces a bare I/O error that carries a TLS alert or certificate error
/// with a sentence saying what is wrong and how to fix it.
fn explain(cfg: &ClientConfig, e: Error) -> Error {
    match e {
        Error::ConnectionLost { peer, source } => match tls::rustls_error(&source) {
            Some(te) if tls::not_xfer(te).is_some() => {
                Error::NotXfer { addr: peer, why: tls::not_xfer(te).unwrap_or_default() }
            }
            Some(te) => Error::Tls {
                peer,
                message: tls::explain_for_client(te, cfg.server_name.as_deref().unwrap_or(&cfg.host), &cfg.identity),
            },
            None => Error::ConnectionLost { peer, source },
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use push::source_name;
    use std::path::Path;

    #[test]
    fn targets_parse_with_and_without_ports() {
        assert_eq!(parse_target("files.example.org").unwrap(), ("files.example.org".into(), 5001));
        assert_eq!(parse_target("h:7").unwrap(), ("h".into(), 7));
        assert_eq!(parse_target("127.0.0.1:9").unwrap(), ("127.0.0.1".into(), 9));
        assert_eq!(parse_target("[::1]:8").unwrap(), ("::1".into(), 8));
        assert_eq!(parse_target("[::1]").unwrap(), ("::1".into(), 5001));
        assert_eq!(parse_target("::1").unwrap(), ("::1".into(), 5001));
        for bad in ["", "h:", "h:x", "[::1", "[::1]x", "h:70000"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_are_named_by_their_last_component() {
        assert_eq!(source_name(Path::new("a/b.txt")).unwrap(), "b.txt");
        assert_eq!(source_name(Path::new("dist/")).unwrap(), "dist");
        let here = std::env::current_dir().unwrap();
        assert_eq!(source_name(Path::new(".")).unwrap(), here.file_name().unwrap().to_str().unwrap());
    }
}
