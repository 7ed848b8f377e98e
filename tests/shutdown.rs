//! Graceful shutdown of the real binary: SIGTERM drains, tunnels get a WebSocket
//! Close at moments spread over the drain's first half, and the process exits 0.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::process::Sluice;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn readyz(admin: SocketAddr) -> u16 {
    status_of(&raw_exchange(admin, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n").await)
}

#[tokio::test]
async fn sigterm_closes_open_tunnels_with_1001_then_exits_zero() {
    let backend = ws_echo_backend().await;
    // A drain no longer than close_timeout leaves no room to spread the Closes: they
    // go at once.
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
    // New connections are no longer accepted...
    assert!(TcpStream::connect(sluice.http).await.is_err());
    // ...and the open tunnel gets a Close 1001 (Going Away), not a TCP cut.
    assert_eq!(close_code(&mut ws).await, Some(1001));

    // The client's Close answers it (tungstenite sends it as it reads), the tunnel
    // ends, and with nothing left the process exits well before the drain's 5s.
    while let Some(Ok(_)) = within("the end of the stream", ws.next()).await {}
    drop(ws);
    let (code, took) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test]
async fn the_close_code_on_drain_is_configurable() {
    let backend = ws_echo_backend().await;
    let mut sluice = Sluice::start(&config(
        &[backend.addr],
        "[timeouts]\ndrain = \"2s\"\n[websocket]\nclose_code = 1012\n",
    ));
    let mut ws = ws_connect(&format!("ws://{}/", sluice.http)).await;
    echo_once(&mut ws, Message::text("before")).await;
    sluice.signal("TERM");
    assert_eq!(close_code(&mut ws).await, Some(1012));
    while let Some(Ok(_)) = within("the end of the stream", ws.next()).await {}
    assert_eq!(sluice.wait_exit().await.0, Some(0));
}

#[tokio::test]
async fn closes_are_spread_over_the_first_half_of_the_drain() {
    let backend = ws_echo_backend().await;
    // drain 4s, close_timeout 1s: every Close goes within the first 2s.
    let mut sluice = Sluice::start(&config(
        &[backend.addr],
        "[timeouts]\ndrain = \"4s\"\n[websocket]\nclose_timeout = \"1s\"\n",
    ));
    let mut clients = Vec::new();
    for i in 0..16 {
        let mut ws = ws_connect(&format!("ws://{}/", sluice.http)).await;
        echo_once(&mut ws, Message::text(format!("client {i}"))).await;
        clients.push(ws);
    }
    let signalled = Instant::now();
    sluice.signal("TERM");
    let waits = futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
        // Each client keeps talking until its Close comes: the tunnel works until then.
        let code = close_code(&mut ws).await;
        let at = signalled.elapsed();
        while let Some(Ok(_)) = within("the end of the stream", ws.next()).await {}
        (code, at)
    }))
    .await;
    let times: Vec<Duration> = waits.iter().map(|(_, at)| *at).collect();
    for (code, _) in &waits {
        assert_eq!(*code, Some(1001));
    }
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    assert!(
        last < Duration::from_millis(2500),
        "a Close came at {last:?}: {times:?}"
    );
    // 16 moments drawn uniformly over 2s all within 0.4s of each other: odds of about
    // 16 x 0.2^15, so a failure here means the Closes were not spread.
    assert!(
        last - first > Duration::from_millis(400),
        "Closes bunched: {times:?}"
    );
    let (code, took) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_millis(3500), "took {took:?}");
}

#[tokio::test]
async fn peers_that_never_answer_the_close_are_cut_when_the_drain_ends() {
    // An upstream that completes the upgrade, then only reads: it reports what it got
    // once its connection ends.
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (addr, _) = raw_backend(move |mut s, head| {
        let got_tx = got_tx.clone();
        async move {
            s.write_all(switching_protocols(&head, "").as_bytes())
                .await
                .unwrap();
            let _ = got_tx.send(read_to_eof(&mut s).await);
        }
    })
    .await;
    let mut sluice = Sluice::start(&config(&[addr], "[timeouts]\ndrain = \"1s\"\n"));
    let mut s = TcpStream::connect(sluice.http).await.unwrap();
    s.write_all(handshake_request("/", "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert_eq!(status_of(&head), 101);
    let signalled = Instant::now();
    sluice.signal("TERM");
    // The Close comes at once (a 1s drain leaves no room to spread)...
    let mut close = [0u8; 4];
    within("the Close", s.read_exact(&mut close)).await.unwrap();
    assert_eq!(close, [0x88, 0x02, 0x03, 0xE9], "an unmasked Close 1001");
    // ...and as neither peer answers, both connections are cut when the drain ends.
    let rest = within("the cut", read_to_eof(&mut s)).await;
    assert!(rest.is_empty(), "{rest:?}");
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "cut after {waited:?}, before the drain ended"
    );
    // The upstream got its Close too, masked as a client's frame must be.
    let upstream = within("the upstream's end", got.recv()).await.unwrap();
    assert_eq!(upstream.len(), 8, "{upstream:?}");
    assert_eq!(&upstream[..2], &[0x88, 0x82]);
    let mask = &upstream[2..6];
    assert_eq!([upstream[6] ^ mask[0], upstream[7] ^ mask[1]], [0x03, 0xE9]);
    let (code, _) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
}

/// Reads until a Close arrives, answering nothing else; its code.
async fn close_code(ws: &mut Client) -> Option<u16> {
    loop {
        match within("a Close", ws.next()).await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("the tunnel ended without a Close: {other:?}"),
        }
    }
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
