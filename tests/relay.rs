//! Heads, frames and bodies cut into segments of a few bytes, some of them late: a
//! fault-injecting relay (`support/relay.rs`) on both sides of sluice, client to
//! sluice and sluice to upstream, so that every parser sluice has sees its input
//! split at arbitrary bytes. Every echo and body is compared with what was sent.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use support::relay::{Faults, Relay};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const FAULTS: Faults = Faults {
    max_segment: 7,
    delay_one_in: 64,
    max_delay: Duration::from_millis(3),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_late_segments_change_no_byte_of_a_tunnel() {
    let backend = ws_echo_backend().await;
    let to_upstream = Relay::start(backend.addr, FAULTS, 1).await;
    let gw = gateway_for(&[to_upstream.addr], "").await;
    let to_sluice = Relay::start(gw.addr, FAULTS, 2).await;
    let mut rng = fastrand::Rng::with_seed(3);
    let mut carried = 0usize;
    for t in 0..12 {
        let stream = TcpStream::connect(to_sluice.addr).await.unwrap();
        let (mut ws, resp) = within(
            "a handshake in pieces",
            tokio_tungstenite::client_async_with_config(
                gw.url("/"),
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
                Some(big_messages()),
            ),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..20 {
            let len = match rng.u32(0..10) {
                0 => rng.usize(126..=20_000),
                _ => rng.usize(0..=125),
            };
            let mut payload = vec![0u8; len];
            rng.fill(&mut payload);
            let msg = if i % 3 == 0 {
                Message::text(format!("{t}/{i}: {}", "x".repeat(len % 200)))
            } else {
                Message::binary(payload)
            };
            carried += msg.len();
            within("send", ws.send(msg.clone())).await.unwrap();
            let echo = within("the echo, in pieces", ws.next())
                .await
                .expect("an echo")
                .unwrap();
            assert_eq!(echo, msg, "tunnel {t}, message {i}");
        }
        within("close", ws.close(None)).await.unwrap();
        while let Some(Ok(m)) = within("the close reply", ws.next()).await {
            assert!(m.is_close(), "{m:?}");
        }
    }
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_handshakes_total{outcome=\"upgraded\",route=\"backend\"}"
        ),
        12.0,
        "{text}"
    );
    let segments = to_sluice
        .segments
        .load(std::sync::atomic::Ordering::Relaxed)
        + to_upstream
            .segments
            .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("12 tunnels, 240 messages ({carried} bytes) each way, in {segments} segments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_late_segments_change_no_byte_of_a_body() {
    let (mirror, _) = mirror_backend().await;
    let to_upstream = Relay::start(mirror, FAULTS, 4).await;
    let gw = gateway_for(&[to_upstream.addr], "").await;
    let to_sluice = Relay::start(gw.addr, FAULTS, 5).await;
    let mut client = HttpClient::connect(to_sluice.addr).await;
    let mut rng = fastrand::Rng::with_seed(6);
    for i in 0..8 {
        let mut body = vec![0u8; rng.usize(1..=64 << 10)];
        rng.fill(&mut body);
        let req = Request::post(format!("/upload/{i}"))
            .header("host", "test.local")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let (status, _, got) = client.send(req).await;
        assert_eq!(status, 200);
        // The mirror answers with the head it saw, a blank line, then the body.
        let at = got
            .windows(2)
            .position(|w| w == b"\n\n")
            .expect("the mirrored head")
            + 2;
        assert!(got.starts_with(format!("POST /upload/{i}\n").as_bytes()));
        assert_eq!(&got[at..], &body[..], "body {i} changed on the way");
    }
}
