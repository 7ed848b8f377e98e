//! The io_uring tunnel experiment (`SLUICE_IO_URING=1`) in the real binary: opaque
//! WebSocket tunnels (`SLUICE_WS_FRAMES=0`) relayed through the ring carry messages of
//! every size intact, pass the closing handshake, and count what moved in the access
//! log and the metrics.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::frames::frame_len;
use support::process::Sluice;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn opaque_tunnels_through_io_uring_echo_close_and_count() {
    let backend = ws_echo_backend().await;
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
name = "chat"
path = "/ws"
upstream = "ws"
[upstreams.ws]
servers = ["{}"]
"#,
        backend.addr
    );
    let sluice = Sluice::start_under(&toml, &["env", "SLUICE_IO_URING=1", "SLUICE_WS_FRAMES=0"]);

    let mut ws = ws_connect(&format!("ws://{}/ws/room", sluice.http)).await;
    // The tunnel went to the ring, not to the splice transfer it falls back on.
    sluice.wait_log("io_uring tunnel transfer ready");
    let sizes = [1usize, 64, 64 * 1024, 1 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(i as u64);
        let payload: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        echo_once(&mut ws, Message::binary(payload)).await;
    }
    // The client's Close goes through and the echo server's comes back.
    within("close", ws.send(Message::Close(None)))
        .await
        .unwrap();
    let reply = within("the Close back", ws.next()).await;
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "got {reply:?}"
    );
    while let Some(Ok(_)) = within("end of stream", ws.next()).await {}
    drop(ws);

    let line = sluice.wait_log("\"kind\":\"tunnel\"");
    assert!(
        !line.contains("io_uring unavailable"),
        "io_uring was refused: {line}"
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    let up: u64 = sizes.iter().map(|&l| frame_len(l, true)).sum::<u64>() + frame_len(0, true);
    let down: u64 = sizes.iter().map(|&l| frame_len(l, false)).sum::<u64>() + frame_len(0, false);
    assert_eq!(f["route"], "chat");
    assert_eq!(f["status"], 101);
    assert!(
        matches!(f["end"].as_str(), Some("upstream_closed" | "client_closed")),
        "{line}"
    );
    assert_eq!(f["bytes_in"], up, "{line}");
    assert_eq!(f["bytes_out"], down, "{line}");

    let metrics = raw_exchange(
        sluice.admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    let series = |dir: &str| {
        metric(
            &metrics,
            &format!("sluice_tunnel_bytes_total{{direction=\"{dir}\",route=\"chat\"}}"),
        )
    };
    assert_eq!(series("client_to_upstream"), up as f64);
    assert_eq!(series("upstream_to_client"), down as f64);
    assert_eq!(
        metric(&metrics, "sluice_websocket_tunnels_active{route=\"chat\"}"),
        0.0
    );
    assert_eq!(
        metric(
            &metrics,
            "sluice_tunnel_duration_seconds_count{route=\"chat\"}"
        ),
        1.0
    );
}
