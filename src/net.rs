//! Socket options every accepted connection gets, on every listener: TCP
//! keepalive, and TCP_NODELAY, without which a small response waits for the
//! client's delayed ACK (Nagle: ~40 ms a call for a client that sends one
//! call at a time). tonic ignores its own `tcp_nodelay` setting for a
//! listener handed to `serve_with_incoming`, so the options are set here.
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

/// Idle time before the first keepalive probe: dead peers (a node gone
/// without a FIN) free their connection in minutes, not hours.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The accepted connections of a gRPC listener, with the options set.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_TIME))
        .with_keepalive_interval(Some(KEEPALIVE_INTERVAL))
}

/// Sets the same options on a connection accepted by hand (the metrics
/// listener). Failures are logged, not fatal: the connection still works.
pub fn tune_accepted(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::warn!(error = %e, "cannot set TCP keepalive");
    }
}
