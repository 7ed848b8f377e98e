//! WebSocket-aware tunnels, driven with exact bytes: a raw client and a raw upstream
//! on either side of sluice. Frames that break the rules or a limit get the Close
//! their sender is owed (1002, 1009, 1008) and the other side `close_code`; sluice's
//! own Pings find silent peers and its Pongs never reach the other side; a stop lands
//! its Close at a frame boundary; every frame, message and Close is counted.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::frames::{
    FIN, Frame, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, client_binary,
    client_text, close, frame, read_frame, server_text,
};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const MASK: Option<[u8; 4]> = Some(support::frames::CLIENT_MASK);

/// An upstream that completes every upgrade (its 101 carrying `extra` header lines)
/// and hands the connection to the test.
async fn raw_upstream(extra: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, _) = raw_backend(move |mut s, head| {
        let tx = tx.clone();
        async move {
            s.write_all(switching_protocols(&head, extra).as_bytes())
                .await
                .unwrap();
            let _ = tx.send(s);
        }
    })
    .await;
    (addr, rx)
}

/// A tunnel through the gateway at `gw`: the client's end and the upstream's.
async fn open(
    gw: SocketAddr,
    ups: &mut mpsc::UnboundedReceiver<TcpStream>,
) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect(gw).await.unwrap();
    client
        .write_all(handshake_request("/", "").as_bytes())
        .await
        .unwrap();
    let head = within("the 101", read_head(&mut client)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    let upstream = within("the upstream's side", ups.recv()).await.unwrap();
    (client, upstream)
}

async fn next(s: &mut TcpStream, what: &str) -> Frame {
    within(what, read_frame(s)).await.unwrap()
}

/// Reads frames until a Close; returns the frames before it and the Close.
async fn until_close(s: &mut TcpStream, what: &str) -> (Vec<Frame>, Frame) {
    let mut before = Vec::new();
    loop {
        let f = next(s, what).await;
        if f.opcode() == OP_CLOSE {
            return (before, f);
        }
        before.push(f);
    }
}

#[tokio::test]
async fn an_unmasked_client_frame_gets_1002_and_the_upstream_close_code() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    client.write_all(&client_text(b"fine")).await.unwrap();
    client.write_all(&server_text(b"unmasked")).await.unwrap();
    // The client, the offender, gets 1002 (unmasked, from the server side)...
    let (_, close) = until_close(&mut client, "the client's Close").await;
    assert_eq!((close.close_code(), close.masked), (Some(1002), false));
    // ...the upstream the good frame, never the bad one, then a masked 1001.
    let (before, close) = until_close(&mut upstream, "the upstream's Close").await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].payload, b"fine");
    assert_eq!((close.close_code(), close.masked), (Some(1001), true));
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_refusals_total{from=\"client\",reason=\"protocol\",route=\"backend\"}"
        ),
        1.0
    );
    for code in ["1001", "1002"] {
        let series = format!(
            "sluice_websocket_closes_total{{code=\"{code}\",from=\"sluice\",route=\"backend\"}}"
        );
        assert_eq!(metric(&text, &series), 1.0, "{series}");
    }
}

#[tokio::test]
async fn a_masked_upstream_frame_gets_1002_and_the_client_close_code() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "[websocket]\nclose_code = 1012\n").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    upstream.write_all(&client_text(b"masked")).await.unwrap();
    let (_, close) = until_close(&mut upstream, "the upstream's Close").await;
    assert_eq!((close.close_code(), close.masked), (Some(1002), true));
    let (before, close) = until_close(&mut client, "the client's Close").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!((close.close_code(), close.masked), (Some(1012), false));
}

#[tokio::test]
async fn reserved_bits_pass_only_with_the_extension_the_101_agreed() {
    let rsv1 = frame(0x40 | FIN | OP_TEXT, b"deflated", MASK);
    // No extension: RSV1 is a protocol error.
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "").await;
    let (mut client, _upstream) = open(gw.addr, &mut ups).await;
    client.write_all(&rsv1).await.unwrap();
    let (_, close) = until_close(&mut client, "a Close").await;
    assert_eq!(close.close_code(), Some(1002));

    // permessage-deflate agreed: RSV1 on a message's first frame passes untouched.
    let (addr, mut ups) = raw_upstream("Sec-WebSocket-Extensions: permessage-deflate\r\n").await;
    let gw = gateway_for(&[addr], "").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    client.write_all(&rsv1).await.unwrap();
    let f = next(&mut upstream, "the compressed frame").await;
    assert_eq!(
        (f.first, &f.payload[..]),
        (0x40 | FIN | OP_TEXT, &b"deflated"[..])
    );
}

#[tokio::test]
async fn a_message_over_max_message_bytes_gets_1009() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "[websocket]\nmax_message_bytes = 1000\n").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    // A whole message under the limit passes; a fragmented one that goes over is
    // refused at the fragment that crosses it.
    client.write_all(&client_text(&[b'a'; 1000])).await.unwrap();
    for (first, n) in [
        (OP_TEXT, 400),
        (OP_CONTINUATION, 400),
        (FIN | OP_CONTINUATION, 400),
    ] {
        client
            .write_all(&frame(first, &vec![b'b'; n], MASK))
            .await
            .unwrap();
    }
    let (_, close) = until_close(&mut client, "the client's Close").await;
    assert_eq!(close.close_code(), Some(1009));
    let (before, close) = until_close(&mut upstream, "the upstream's Close").await;
    let sizes: Vec<usize> = before.iter().map(|f| f.payload.len()).collect();
    assert_eq!(sizes, [1000, 400, 400], "the third fragment never passed");
    assert_eq!(close.close_code(), Some(1001));
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_refusals_total{from=\"client\",reason=\"message_too_big\",route=\"backend\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_from_the_upstream_gets_1009() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "[websocket]\nmax_frame_bytes = 1500\n").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    upstream
        .write_all(&server_text(&[b'x'; 2000]))
        .await
        .unwrap();
    let (_, close) = until_close(&mut upstream, "the upstream's Close").await;
    assert_eq!((close.close_code(), close.masked), (Some(1009), true));
    let (before, close) = until_close(&mut client, "the client's Close").await;
    assert!(before.is_empty());
    assert_eq!(close.close_code(), Some(1001));
}

#[tokio::test]
async fn messages_beyond_max_messages_per_second_get_1008() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "[websocket]\nmax_messages_per_second = 5\n").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    let mut burst = Vec::new();
    for i in 0..20u8 {
        burst.extend(client_text(&[b'0' + i % 10]));
    }
    client.write_all(&burst).await.unwrap();
    let (_, close) = until_close(&mut client, "the client's Close").await;
    assert_eq!(close.close_code(), Some(1008));
    let (before, close) = until_close(&mut upstream, "the upstream's Close").await;
    // A second's worth (5) passes at once, hardly more in the time the burst takes.
    assert!((5..=6).contains(&before.len()), "{} passed", before.len());
    assert_eq!(close.close_code(), Some(1001));
}

#[tokio::test]
async fn frames_messages_sizes_and_closes_are_counted() {
    let backend = ws_echo_backend().await;
    let gw = gateway_for(&[backend.addr], "").await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(handshake_request("/", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(status_of(&read_head(&mut client).await.unwrap()), 101);
    let mut out = client_text(b"hello");
    out.extend(client_binary(&[7u8; 300]));
    out.extend(frame(OP_TEXT, b"ab", MASK));
    out.extend(frame(FIN | OP_PING, b"p", MASK));
    out.extend(frame(FIN | OP_CONTINUATION, b"cd", MASK));
    client.write_all(&out).await.unwrap();
    // The echo answers the Ping and the three messages.
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(next(&mut client, "the echoes").await);
    }
    client.write_all(&close(1000, MASK)).await.unwrap();
    let (_, back) = until_close(&mut client, "the Close back").await;
    assert_eq!(back.close_code(), Some(1000));
    let _ = read_to_eof(&mut client).await;

    let text = metrics_text(&gw).await;
    let series = |name: &str, labels: &str| metric(&text, &format!("{name}{{{labels}}}"));
    let frames = |dir: &str, kind: &str| {
        series(
            "sluice_websocket_frames_total",
            &format!("direction=\"{dir}\",kind=\"{kind}\",route=\"backend\""),
        )
    };
    let up = "client_to_upstream";
    let down = "upstream_to_client";
    assert_eq!(
        [
            frames(up, "text"),
            frames(up, "binary"),
            frames(up, "continuation")
        ],
        [2.0, 1.0, 1.0]
    );
    assert_eq!([frames(up, "ping"), frames(up, "close")], [1.0, 1.0]);
    assert_eq!([frames(down, "pong"), frames(down, "close")], [1.0, 1.0]);
    assert_eq!(frames(down, "text") + frames(down, "binary"), 3.0);
    let messages = |dir: &str| {
        series(
            "sluice_websocket_messages_total",
            &format!("direction=\"{dir}\",route=\"backend\""),
        )
    };
    assert_eq!([messages(up), messages(down)], [3.0, 3.0]);
    let sizes = |part: &str| {
        series(
            &format!("sluice_websocket_message_size_bytes_{part}"),
            "direction=\"client_to_upstream\",route=\"backend\"",
        )
    };
    assert_eq!([sizes("count"), sizes("sum")], [3.0, 309.0]);
    for from in ["client", "upstream"] {
        assert_eq!(
            series(
                "sluice_websocket_closes_total",
                &format!("code=\"1000\",from=\"{from}\",route=\"backend\"")
            ),
            1.0,
            "{from}"
        );
    }
}

#[tokio::test]
async fn sluice_pings_silent_peers_and_keeps_its_pongs_to_itself() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(
        &[addr],
        "[websocket]\nping_interval = \"1s\"\nping_timeout = \"5s\"\n",
    )
    .await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    // Both sides silent: each gets sluice's Ping and answers it.
    for (side, masked) in [(&mut client, false), (&mut upstream, true)] {
        let ping = next(side, "sluice's Ping").await;
        assert_eq!((ping.opcode(), ping.masked), (OP_PING, masked));
        assert!(ping.payload.starts_with(b"sluice"), "{ping:?}");
        let mask = if masked { None } else { MASK };
        side.write_all(&frame(FIN | OP_PONG, &ping.payload, mask))
            .await
            .unwrap();
    }
    // The peers' own Ping and Pong pass; sluice's Pongs did not (the first frame
    // each side sees next is the other's Ping or its answer).
    client
        .write_all(&frame(FIN | OP_PING, b"mine", MASK))
        .await
        .unwrap();
    let f = next(&mut upstream, "the client's Ping").await;
    assert_eq!((f.opcode(), &f.payload[..]), (OP_PING, &b"mine"[..]));
    upstream
        .write_all(&frame(FIN | OP_PONG, b"mine", None))
        .await
        .unwrap();
    let f = next(&mut client, "the upstream's Pong").await;
    assert_eq!((f.opcode(), &f.payload[..]), (OP_PONG, &b"mine"[..]));
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_ends_the_tunnel_with_a_close() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(
        &[addr],
        "[websocket]\nping_interval = \"1s\"\nping_timeout = \"1s\"\n",
    )
    .await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    let opened = Instant::now();
    // The client answers every Ping; the upstream, wedged with its socket open,
    // never reads.
    let (_, close) = loop {
        let f = next(&mut client, "a Ping or the Close").await;
        match f.opcode() {
            OP_PING => client
                .write_all(&frame(FIN | OP_PONG, &f.payload, MASK))
                .await
                .unwrap(),
            OP_CLOSE => break (Vec::<Frame>::new(), f),
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(close.close_code(), Some(1001));
    let took = opened.elapsed();
    // Silent for one interval, then a Ping unanswered for ping_timeout: within about
    // 3 s (looks are one interval apart).
    assert!(took >= Duration::from_millis(1900), "after {took:?}");
    assert!(took < Duration::from_secs(5), "after {took:?}");
    // The wedged upstream got its Ping, then a Close, all unread in its buffer.
    let ping = next(&mut upstream, "the upstream's Ping").await;
    assert_eq!((ping.opcode(), ping.masked), (OP_PING, true));
    let close = next(&mut upstream, "the upstream's Close").await;
    assert_eq!(close.close_code(), Some(1001));
}

/// The mirror of the test above: a client that stopped reading (its socket open,
/// nothing read, no Pong) while the upstream answers every Ping.
#[tokio::test]
async fn a_client_that_stopped_reading_is_found_by_sluices_pings() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(
        &[addr],
        "[websocket]\nping_interval = \"1s\"\nping_timeout = \"1s\"\n",
    )
    .await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    let opened = Instant::now();
    let close = loop {
        let f = next(&mut upstream, "a Ping or the Close").await;
        match f.opcode() {
            OP_PING => {
                assert!(f.masked, "sluice's Ping to an upstream is masked");
                upstream
                    .write_all(&frame(FIN | OP_PONG, &f.payload, None))
                    .await
                    .unwrap();
            }
            OP_CLOSE => break f,
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert!(close.masked);
    assert_eq!(close.close_code(), Some(1001));
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(1900), "after {took:?}");
    assert!(took < Duration::from_secs(5), "after {took:?}");
    // What waited unread for the client: sluice's Ping, then its Close.
    let ping = next(&mut client, "the client's Ping").await;
    assert_eq!((ping.opcode(), ping.masked), (OP_PING, false));
    let close = next(&mut client, "the client's Close").await;
    assert_eq!(close.close_code(), Some(1001));
    // Both Closes were sluice's.
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_websocket_closes_total{code=\"1001\",from=\"sluice\",route=\"backend\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn a_fragmented_message_in_flight_is_finished_before_the_close() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "[limits]\nmax_tunnel_lifetime = \"1s\"\n").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    upstream
        .write_all(&frame(OP_TEXT, b"part one", None))
        .await
        .unwrap();
    // The upstream's own Close from sluice marks the tunnel ending; the message's last
    // fragment is sent after it, and still reaches the client before its Close.
    let (_, theirs) = until_close(&mut upstream, "the upstream's Close").await;
    assert_eq!(theirs.close_code(), Some(1001));
    upstream
        .write_all(&frame(FIN | OP_CONTINUATION, b" and two", None))
        .await
        .unwrap();
    let (before, close) = until_close(&mut client, "the Close").await;
    let parts: Vec<&[u8]> = before.iter().map(|f| &f.payload[..]).collect();
    assert_eq!(parts, [&b"part one"[..], &b" and two"[..]]);
    assert_eq!(close.close_code(), Some(1001));
    // Both answer; the tunnel ends.
    upstream
        .write_all(&support::frames::close(1001, None))
        .await
        .unwrap();
    client
        .write_all(&support::frames::close(1001, MASK))
        .await
        .unwrap();
    let rest = within("the end", read_to_eof(&mut client)).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_fragmented_message_that_stalls_gets_the_close_between_its_fragments() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(
        &[addr],
        "[limits]\nmax_tunnel_lifetime = \"1s\"\n[websocket]\nclose_timeout = \"1s\"\n",
    )
    .await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    upstream
        .write_all(&frame(OP_TEXT, b"part one", None))
        .await
        .unwrap();
    let (_, theirs) = until_close(&mut upstream, "the upstream's Close").await;
    let ending = Instant::now();
    assert_eq!(theirs.close_code(), Some(1001));
    // No second fragment: after half of close_timeout the Close comes between the
    // fragments (RFC 6455 lets it).
    let (before, close) = until_close(&mut client, "the Close").await;
    let waited = ending.elapsed();
    assert_eq!(before.len(), 1);
    assert_eq!(
        (before[0].first, &before[0].payload[..]),
        (OP_TEXT, &b"part one"[..])
    );
    assert_eq!(close.close_code(), Some(1001));
    assert!(waited >= Duration::from_millis(400), "after {waited:?}");
}

#[tokio::test]
async fn a_large_frame_in_flight_finishes_before_sluices_close() {
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "[limits]\nmax_tunnel_lifetime = \"1s\"\n").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    // 16 MiB announced, sent across the lifetime limit in pieces.
    let len = 16 << 20;
    let head = frame(FIN | OP_BINARY, &[], None);
    let mut header = vec![head[0], 127];
    header.extend_from_slice(&(len as u64).to_be_bytes());
    let writer = tokio::spawn(async move {
        upstream.write_all(&header).await.unwrap();
        let piece = vec![0xA5u8; len / 8];
        for _ in 0..8 {
            upstream.write_all(&piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        upstream
    });
    let f = next(&mut client, "the 16 MiB frame").await;
    assert_eq!(f.payload.len(), len);
    assert!(f.payload.iter().all(|&b| b == 0xA5));
    let f = next(&mut client, "the Close after it").await;
    assert_eq!(f.close_code(), Some(1001));
    let _ = writer.await.unwrap();
}

#[tokio::test]
async fn an_rfc_8441_tunnel_gets_its_close_on_the_copying_transfer() {
    // Over HTTP/2 the client's leg is a stream, so the tunnel copies through memory
    // rather than splicing; the Close lands the same way.
    let (addr, mut ups) = raw_upstream("").await;
    let gw = start(&listener_config(
        "http2 = true",
        &[addr],
        "[limits]\nmax_tunnel_lifetime = \"1s\"\n",
    ))
    .await;
    let mut h2 = support::h2::H2Client::h2c(gw.addr).await;
    let resp = support::h2::extended_connect(&mut h2, "http://test.local/", &[]).await;
    let mut io = support::h2::tunnel(resp).await;
    let mut upstream = within("the upstream's side", ups.recv()).await.unwrap();
    upstream.write_all(&server_text(b"over h2")).await.unwrap();
    let f = within("the message", read_frame(&mut io)).await.unwrap();
    assert_eq!(f.payload, b"over h2");
    let f = within("the Close", read_frame(&mut io)).await.unwrap();
    assert_eq!((f.close_code(), f.masked), (Some(1001), false));
    let (_, close) = until_close(&mut upstream, "the upstream's Close").await;
    assert_eq!((close.close_code(), close.masked), (Some(1001), true));
}

#[tokio::test]
async fn runs_of_large_and_small_frames_pass_intact_and_a_bad_header_after_a_large_one_stops() {
    // After a large frame sluice peeks at the next header and splices header and
    // payload together; small ones go through memory. Every byte must pass as sent.
    let (addr, mut ups) = raw_upstream("").await;
    let gw = gateway_for(&[addr], "").await;
    let (mut client, mut upstream) = open(gw.addr, &mut ups).await;
    let mut sent = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..24usize {
        let n = match i % 4 {
            0 | 1 => 70_000 + i,
            2 => 20,
            _ => 17_000,
        };
        let payload: Vec<u8> = (0..n).map(|b| (b * 7 + i) as u8).collect();
        sent.extend(server_text(&payload));
        sizes.push(payload);
    }
    // Then a masked frame from the server: a protocol error, right after a large one.
    sent.extend(server_text(&vec![1u8; 70_000]));
    sizes.push(vec![1u8; 70_000]);
    let bad = frame(FIN | OP_BINARY, &[2u8; 100], MASK);
    let mut all = sent.clone();
    all.extend(&bad);
    let writer = tokio::spawn(async move {
        upstream.write_all(&all).await.unwrap();
        upstream
    });
    for (i, payload) in sizes.iter().enumerate() {
        let f = next(&mut client, "a frame").await;
        assert!(f.payload == *payload, "frame {i} differs");
    }
    let f = next(&mut client, "the Close").await;
    assert_eq!(f.close_code(), Some(1001), "the bad frame never passed");
    let mut upstream = writer.await.unwrap();
    let (_, close) = until_close(&mut upstream, "the upstream's Close").await;
    assert_eq!(close.close_code(), Some(1002));
}
