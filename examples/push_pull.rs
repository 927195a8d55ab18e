//! Embedding xfer without the CLI: make a CA and two peers, run a server on
//! a free loopback port, push a file to it, pull it back and check it.
//!
//! Run with `cargo run --example push_pull`.

use std::path::PathBuf;

use xfer::pki::{KeygenConfig, keygen};
use xfer::progress::{Op, Output, Reporter};
use xfer::{Client, ClientConfig, IdentityPaths, PushPlan, ServeConfig, Server, WirePath};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = std::env::temp_dir().join(format!("xfer-example-{}", std::process::id()));
    let certs = work.join("certs");

    // 1. A CA, a server certificate `server` and a client certificate
    //    `client` (what `xfer keygen` with no names does).
    keygen(&KeygenConfig::pair(certs.clone()))?;

    // 2. A server on 127.0.0.1, port chosen by the OS, stopped by a oneshot.
    let listen = "127.0.0.1:0".parse()?;
    let server =
        Server::bind(ServeConfig::new(listen, work.join("root"), IdentityPaths::in_dir(&certs, "server"))).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // 3. Push a file: sources are checked before connecting.
    let src = work.join("hello.txt");
    std::fs::write(&src, b"hello over mutual TLS\n")?;
    let plan = PushPlan::new(&[src], &WirePath::from_user("inbox")?)?;
    let config = ClientConfig::new(&addr.to_string(), IdentityPaths::in_dir(&certs, "client"))?;
    let mut client = Client::connect(config.clone()).await?;
    let mut report = Reporter::new(Output::Silent, Op::Push);
    client.push(plan, &mut report).await?;
    client.close().await?;
    println!("pushed: {:?}", report.finish()?);

    // 4. Pull it back into another folder; it is verified before it lands.
    let out: PathBuf = work.join("got");
    let mut client = Client::connect(config).await?;
    let mut report = Reporter::new(Output::Silent, Op::Pull);
    client.pull(&[WirePath::parse("inbox/hello.txt")?], &out, &mut report).await?;
    client.close().await?;
    println!("pulled: {:?}", report.finish()?);
    assert_eq!(std::fs::read(out.join("hello.txt"))?, b"hello over mutual TLS\n");

    let _ = stop.send(());
    running.await??;
    std::fs::remove_dir_all(&work)?;
    println!("ok: the file made the round trip, verified with BLAKE3 both ways");
    Ok(())
}
