use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

fn timers(secs: u64) -> Timers {
    Timers {
        idle: Duration::from_secs(secs),
        half_closed: Duration::from_secs(secs),
    }
}

/// Stops that never fire, and the token that would end the tunnel as drained.
fn stops() -> (Stops, CancellationToken) {
    let drain = CancellationToken::new();
    let stops = Stops {
        token: drain.child_token(),
        draining: drain.clone(),
        drain: drain.clone(),
        spread: Duration::from_secs(1),
        lifetime: None,
    };
    (stops, drain)
}

fn counters() -> Counters {
    Counters {
        client_to_upstream: IntCounter::new("a", "a").unwrap(),
        upstream_to_client: IntCounter::new("b", "b").unwrap(),
        ws: None,
    }
}

#[tokio::test]
async fn copies_both_ways_and_passes_half_close() {
    let (client, mut client_peer) = duplex(1024);
    let (upstream, mut upstream_peer) = duplex(1024);
    let c = counters();
    let up_counter = c.client_to_upstream.clone();
    let task = tokio::spawn(run(client, upstream, timers(60), c, stops().0, None));

    client_peer.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    upstream_peer.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(up_counter.get(), 5);

    // The client ends its side; the upstream sees EOF but can still answer.
    client_peer.shutdown().await.unwrap();
    assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0);
    upstream_peer.write_all(b"bye").await.unwrap();
    let mut got = [0u8; 3];
    client_peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"bye");
    upstream_peer.shutdown().await.unwrap();

    let report = task.await.unwrap();
    assert_eq!(report.end, End::ClientClosed);
    assert_eq!(report.client_to_upstream, 5);
    assert_eq!(report.upstream_to_client, 3);
}

#[tokio::test]
async fn a_slow_reader_bounds_what_is_buffered() {
    // The upstream side never reads: the pump must stop reading the client once its
    // one pending chunk is stuck, leaving the rest in the client's pipe.
    let (client, mut client_peer) = duplex(64 * 1024);
    let (upstream, _upstream_peer) = duplex(1024);
    let task = tokio::spawn(run(
        client,
        upstream,
        timers(60),
        counters(),
        stops().0,
        None,
    ));
    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), client_peer.write_all(&chunk)).await
        {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
        assert!(sent < 1024 * 1024, "the pump kept reading without writing");
    }
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn idle_tunnels_close() {
    let (client, _c) = duplex(1024);
    let (upstream, _u) = duplex(1024);
    let report = run(client, upstream, timers(5), counters(), stops().0, None).await;
    assert_eq!(report.end, End::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_half_closed_tunnel_closes_after_the_shorter_timer() {
    let (client, mut client_peer) = duplex(1024);
    let (upstream, _u) = duplex(1024);
    let started = Instant::now();
    let run = tokio::spawn(run(
        client,
        upstream,
        Timers {
            idle: Duration::from_secs(300),
            half_closed: Duration::from_secs(5),
        },
        counters(),
        stops().0,
        None,
    ));
    client_peer.shutdown().await.unwrap();
    let report = run.await.unwrap();
    assert_eq!(report.end, End::Idle);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_removed_server_does_not_postpone_the_idle_limit() {
    let (client, _c) = duplex(1024);
    let (upstream, _u) = duplex(1024);
    let (mut stops, _drain) = stops();
    // The server leaves with a long spread: the tunnel must still end by its own
    // idle limit if that comes first, whichever moment in the spread was drawn.
    stops.spread = Duration::from_secs(3600);
    stops.token.cancel();
    let started = Instant::now();
    let report = run(client, upstream, timers(5), counters(), stops, None).await;
    assert!(
        started.elapsed() <= Duration::from_secs(5),
        "ended after {:?} as {:?}",
        started.elapsed(),
        report.end
    );
}

#[tokio::test]
async fn stop_ends_the_tunnel_as_drain() {
    let (client, _c) = duplex(1024);
    let (upstream, _u) = duplex(1024);
    let report = run(
        client,
        upstream,
        timers(60),
        counters(),
        {
            let (stops, drain) = stops();
            drain.cancel();
            stops
        },
        None,
    )
    .await;
    assert_eq!(report.end, End::Drain);
}
