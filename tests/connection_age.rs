//! `--max-connection-age`: an aged client connection is asked to go (HTTP/2
//! GOAWAY) and, with no call in flight, closed, so the client's next calls
//! open a new connection, which a Kubernetes Service may send to another
//! replica. Without the flag a connection stays. Seen on a raw HTTP/2
//! connection, where a gRPC client would hide the reconnect.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{args, start_with};

/// A raw HTTP/2 connection to the server and a task that ends with it.
async fn connect(
    addr: std::net::SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, ended)
}

/// One grpc.health.v1.Health/Check call on the connection; its HTTP status.
async fn health_check(client: h2::client::SendRequest<Bytes>, addr: std::net::SocketAddr) -> u16 {
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    // An empty HealthCheckRequest: a 5-byte gRPC frame of no bytes.
    send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    response.await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aged_connection_is_asked_to_go_and_a_young_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut aged = args(&dir.path().join("aged"));
    aged.max_connection_age = 1;
    let aged = start_with(aged).await;
    let forever = start_with(args(&dir.path().join("forever"))).await;

    let (client, aged_ended) = connect(aged.addr).await;
    assert_eq!(health_check(client.clone(), aged.addr).await, 200);
    let (other, forever_ended) = connect(forever.addr).await;
    assert_eq!(health_check(other.clone(), forever.addr).await, 200);

    tokio::time::timeout(Duration::from_secs(20), aged_ended)
        .await
        .expect("the aged connection is closed")
        .unwrap();
    assert!(
        client.ready().await.is_err(),
        "a closed connection takes no new call"
    );
    // The other server set no age: its connection still takes calls.
    assert!(!forever_ended.is_finished());
    assert_eq!(health_check(other, forever.addr).await, 200);
    aged.stop().await.unwrap();
    forever.stop().await.unwrap();
}
