//! Graceful shutdown of the real binary: SIGTERM drains, tunnels run on within the
//! drain period, and the process exits 0.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::process::Sluice;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn readyz(admin: SocketAddr) -> u16 {
    status_of(&raw_exchange(admin, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n").await)
}

#[tokio::test]
async fn sigterm_drains_open_tunnels_then_exits_zero() {
    let backend = ws_echo_backend().await;
    let mut sluice = Sluice::start(&config(&[backend.addr], "[timeouts]\ndrain = \"5s\"\n"));
    assert_eq!(readyz(sluice.admin).await, 200);
    let mut ws = ws_connect(&format!("ws://{}/", sluice.http)).await;
    echo_once(&mut ws, Message::text("before")).await;

    sluice.signal("TERM");
    // Not ready any more, at once.
    let deadline = Instant::now() + STEP;
    while readyz(sluice.admin).await != 503 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open tunnel keeps working during the drain...
    echo_once(&mut ws, Message::text("during drain")).await;
    // ...while new connections are no longer accepted.
    assert!(TcpStream::connect(sluice.http).await.is_err());

    // When the tunnel ends, nothing is left: the process exits well before 5s.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    let (code, took) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test]
async fn tunnels_still_open_when_the_drain_ends_are_closed() {
    let backend = ws_echo_backend().await;
    let mut sluice = Sluice::start(&config(&[backend.addr], "[timeouts]\ndrain = \"1s\"\n"));
    let mut ws = ws_connect(&format!("ws://{}/", sluice.http)).await;
    echo_once(&mut ws, Message::text("hello")).await;
    let signalled = Instant::now();
    sluice.signal("TERM");
    let end = within("tunnel closed by the drain", ws.next()).await;
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the drain ended"
    );
    let (code, _) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn in_flight_requests_finish_during_the_drain() {
    let (addr, _) = raw_backend(|mut s, _| async move {
        // Slow enough that SIGTERM arrives mid-request.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
            .await
            .unwrap();
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let mut sluice = Sluice::start(&config(&[addr], "[timeouts]\ndrain = \"5s\"\n"));
    let mut s = TcpStream::connect(sluice.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sluice.signal("TERM");
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.ends_with("done"));
    // The keep-alive connection is told to close, and closes.
    assert_eq!(header_of(&resp, "connection"), Some("close"), "{resp}");
    assert!(read_to_eof(&mut s).await.is_empty());
    let (code, took) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(4));
}

#[tokio::test]
async fn sigint_also_drains() {
    let backend = ws_echo_backend().await;
    let mut sluice = Sluice::start(&config(&[backend.addr], ""));
    sluice.signal("INT");
    let (code, _) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn sighup_does_not_kill_the_process() {
    let backend = ws_echo_backend().await;
    let sluice = Sluice::start(&config(&[backend.addr], ""));
    let mut ws = ws_connect(&format!("ws://{}/", sluice.http)).await;
    sluice.signal("HUP");
    echo_once(&mut ws, Message::text("after HUP")).await;
    ws.send(Message::Close(None)).await.unwrap();
}
