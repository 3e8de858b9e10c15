//! The HTTP/1.1 accept loop, with the limits that keep one client from
//! starving the others: a header-read timeout (slowloris), a cap on open
//! connections, and a cap per client IP. A refused connection gets a short
//! JSON error and is closed at once, without reading anything from it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionLimits;
use crate::slots::Slots;

/// How long a refused client gets to take its error answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown`, then waits for open
/// requests to finish (`on_shutdown` runs first, to end long streams).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
    on_shutdown: impl FnOnce(),
) {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip: Slots<IpAddr> = Slots::new(limits.max_connections_per_ip);
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait for
                    // connections to close instead of spinning.
                    tracing::warn!("cannot accept a connection: {err}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(connection_permit) = open.clone().try_acquire_owned() else {
            refuse(
                stream,
                "503 Service Unavailable",
                "server_busy",
                "the server has as many connections open as it allows (kiln serve --max-connections): try again shortly",
            );
            continue;
        };
        let Some(ip_slot) = per_ip.try_take(peer.ip()) else {
            refuse(
                stream,
                "429 Too Many Requests",
                "too_many_connections",
                "your address has as many connections open as the server allows per address (kiln serve --max-connections-per-ip): close some first",
            );
            continue;
        };
        // The client's address, for the audit trail (`auth::Caller`).
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("connection from {peer} ended: {err}");
            }
            drop(ip_slot);
            drop(connection_permit);
        });
    }
    drop(listener);
    on_shutdown();
    graceful.shutdown().await;
}

/// Answers `status` with the API's error body and closes the connection.
fn refuse(mut stream: TcpStream, status: &'static str, code: &'static str, message: &'static str) {
    tokio::spawn(async move {
        let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, answer).await;
    });
}
