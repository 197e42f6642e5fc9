//! A stand-in for `consul agent -dev` on machines without Consul: the project's Consul HTTP API
//! double (KV, blocking queries, txn, sessions, locks) served on a given address until SIGINT
//! or SIGTERM. It keeps everything in memory; it is not Consul.
//!
//! `cargo run --release --example consul_dev -- --listen 127.0.0.1:8500`

#[allow(dead_code)]
#[path = "../tests/support/consul_double.rs"]
mod consul_double;

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Serve the in-memory Consul API double (not a real Consul agent)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    // The double picks its own loopback port; this process relays the given address to it.
    let double = consul_double::ConsulDouble::start();
    let upstream = double.addr();
    println!(
        "Consul API double (in-memory stand-in, not a real Consul agent) listening on http://{}",
        args.listen
    );
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }
    }
    drop(double);
}

async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
