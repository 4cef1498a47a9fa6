//! iotauth's HTTP side (registration, broker hooks, health, metrics) mounted beside your own
//! routes in one axum app, served by iotauth's listener, which keeps what devices need: header
//! names in Title-Case (Alibaba's C SDKs read them so), time limits and a connection cap.
//!
//! Run with `cargo run --example mount_router --features listener`: it serves on a free port,
//! asks both routes once through a plain TCP connection, and stops.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use iotauth::http::{ServerConfig, Services, router};
use iotauth::listener::{HttpListener, ListenerLimits};
use iotauth::store::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The services decide; the same configuration serves every front end.
    let services = Arc::new(Services::new(
        Arc::new(MemoryStore::new()),
        ServerConfig::default(),
    ));
    // Your routes, and iotauth's under their own paths (/auth/register/device, /hooks/…,
    // /healthz, /readyz, /metrics).
    let app = Router::new()
        .route("/hello", get(|| async { "hello from your service\n" }))
        .merge(router(services));

    let tcp = TcpListener::bind("127.0.0.1:0").await?;
    let address = tcp.local_addr()?;
    let listener = HttpListener::new(tcp, ListenerLimits::default(), None)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(app, async {
        let _ = stopped.await;
    }));

    for path in ["/hello", "/healthz"] {
        let mut stream = TcpStream::connect(address).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_default();
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default();
        // Header names in Title-Case, as the C SDKs compare them.
        let names: Vec<_> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, _)| name)
            .collect();
        println!("GET {path}: {status}: {}; headers {names:?}", body.trim());
    }
    let _ = stop.send(());
    server.await?;
    Ok(())
}
