//! Every listener sets TCP_NODELAY and keepalive on the sockets it accepts.
//!
//! The check reads the options back from the server's own accepted sockets
//! (the server runs in this test's process, so its sockets are among
//! /proc/self/fd): a deterministic fact about the socket, where a timing of
//! sequential calls would only make the 40 ms Nagle/delayed-ACK stall likely
//! to show. This file holds one test, so no other test opens sockets on the
//! same ports meanwhile.
mod common;

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};

use common::{args, start_with};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// (TCP_NODELAY, SO_KEEPALIVE) of every connected socket in this process
/// whose local address is `addr`: the connections a listener on `addr`
/// accepted.
fn accepted_options(addr: SocketAddr) -> Vec<(bool, bool)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("procfs is mounted") {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the fd was open a moment ago and the socket is only read
        // (getsockname/getpeername/getsockopt); the address filter below
        // discards anything else that might have taken its number.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd);
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        if local != Some(addr) || socket.peer_addr().is_err() {
            continue; // another socket, or the listener itself
        }
        found.push((
            socket.tcp_nodelay().expect("TCP_NODELAY reads back"),
            socket.keepalive().expect("SO_KEEPALIVE reads back"),
        ));
    }
    found
}

/// One health call on a new connection, kept open for the caller.
async fn health_check(addr: SocketAddr) -> Channel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers");
    channel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_sets_nodelay_and_keepalive_on_accepted_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.health_listen = Some("127.0.0.1:0".parse().unwrap());
    args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start_with(args).await;
    let health_addr = server.health_addr.unwrap();
    let metrics_addr = server.metrics_addr.unwrap();

    // A call answered means its connection was accepted (options are set at
    // accept time), so the sockets are there to be read now.
    let _main = health_check(server.addr).await;
    let _probe = health_check(health_addr).await;
    let mut scrape = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: lstmd\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    scrape.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    for (what, addr) in [
        ("--listen", server.addr),
        ("--health-listen", health_addr),
        ("--metrics-listen", metrics_addr),
    ] {
        let options = accepted_options(addr);
        assert!(!options.is_empty(), "{what}: no accepted socket found");
        for (nodelay, keepalive) in options {
            assert!(nodelay, "{what}: an accepted socket lacks TCP_NODELAY");
            assert!(keepalive, "{what}: an accepted socket lacks SO_KEEPALIVE");
        }
    }
    drop(scrape);
    server.stop().await.unwrap();
}
