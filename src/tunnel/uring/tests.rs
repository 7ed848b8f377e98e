//! The io_uring transfer over real loopback sockets, through a `Tunnel` as sluice runs
//! it. Each test fails if the ring is not there: none of them falls back to splice.

use std::time::Duration;

use prometheus::IntCounter;
use std::os::fd::AsRawFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::TcpListener;

use super::super::{Counters, End, Report, Stops, Timers, Tunnel};
use super::*;

/// A connected pair of sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

fn stops() -> Stops {
    let drain = tokio_util::sync::CancellationToken::new();
    Stops {
        token: drain.child_token(),
        draining: drain.clone(),
        drain,
        spread: Duration::from_secs(1),
        lifetime: None,
    }
}

fn counters() -> Counters {
    Counters {
        client_to_upstream: IntCounter::new("a", "a").unwrap(),
        upstream_to_client: IntCounter::new("b", "b").unwrap(),
        ws: None,
    }
}

fn timers() -> Timers {
    Timers {
        idle: Duration::from_secs(60),
        half_closed: Duration::from_secs(60),
    }
}

/// The transfer on this thread's ring, which must be there.
fn sockets(client: TcpStream, upstream: TcpStream, early: [&[u8]; 2]) -> Sockets {
    assert!(ready(), "io_uring is available on the test machine");
    let s = Sockets::new(
        client,
        upstream,
        Bytes::copy_from_slice(early[0]),
        Bytes::copy_from_slice(early[1]),
    );
    assert!(s.at.is_some(), "the sockets moved to the ring");
    s
}

fn tunnel(s: Sockets) -> Tunnel<Sockets> {
    Tunnel::new(s, timers(), counters(), stops(), None)
}

/// A tunnel between two fresh peers: (client peer, upstream peer, tunnel).
async fn through(early: [&[u8]; 2]) -> (TcpStream, TcpStream, Tunnel<Sockets>) {
    let (client, client_side) = pair().await;
    let (upstream_side, upstream) = pair().await;
    (
        client,
        upstream,
        tunnel(sockets(client_side, upstream_side, early)),
    )
}

/// The socket behind descriptor `fd` of this process, if it is open.
fn inode(fd: std::os::fd::RawFd) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Writes `data` on `s` and shuts its write side, while reading all `s` gets until
/// end of stream; returns what was read.
async fn exchange(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    drop(writer.await.unwrap());
    got
}

#[tokio::test]
async fn a_mebibyte_each_way_at_once_arrives_intact() {
    let (client, upstream, t) = through([b"", b""]).await;
    let task = tokio::spawn(t);
    let up = random(1 << 20, 1);
    let down = random(1 << 20, 2);
    let (got_up, got_down) = within(
        "both ways",
        futures_util::future::join(
            exchange(upstream, down.clone()),
            exchange(client, up.clone()),
        ),
    )
    .await;
    assert!(got_up == up, "client to upstream bytes differ");
    assert!(got_down == down, "upstream to client bytes differ");
    let report: Report = within("the end", task).await.unwrap();
    assert_eq!(report.client_to_upstream, 1 << 20);
    assert_eq!(report.upstream_to_client, 1 << 20);
    assert!(matches!(
        report.end,
        End::ClientClosed | End::UpstreamClosed
    ));
}

#[tokio::test]
async fn early_bytes_go_first() {
    let (mut client, mut upstream, t) = through([b"to upstream ", b"to client "]).await;
    let task = tokio::spawn(t);
    client.write_all(b"then more").await.unwrap();
    upstream.write_all(b"and more").await.unwrap();
    let mut got = [0u8; 21];
    within("upstream reads", upstream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"to upstream then more");
    let mut got = [0u8; 18];
    within("client reads", client.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"to client and more");
    drop((client, upstream));
    let report = within("the end", task).await.unwrap();
    assert_eq!(report.client_to_upstream, 21);
    assert_eq!(report.upstream_to_client, 18);
}

#[tokio::test]
async fn a_half_close_passes_and_the_other_way_keeps_flowing() {
    let (mut client, client_side) = pair().await;
    let (upstream_side, mut upstream) = pair().await;
    let c = counters();
    let up = c.client_to_upstream.clone();
    let s = sockets(client_side, upstream_side, [b"", b""]);
    let task = tokio::spawn(Tunnel::new(s, timers(), c, stops(), None));
    client.write_all(b"hello").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("upstream sees the end", upstream.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"hello");
    assert_eq!(up.get(), 5);
    // The client's end passed; the upstream still talks to it.
    let reply = random(300_000, 3);
    upstream.write_all(&reply).await.unwrap();
    let mut back = vec![0u8; reply.len()];
    within("client reads the reply", client.read_exact(&mut back))
        .await
        .unwrap();
    assert!(back == reply);
    assert!(!task.is_finished());
    upstream.shutdown().await.unwrap();
    let report = within("the end", task).await.unwrap();
    assert_eq!(report.end, End::ClientClosed);
    assert_eq!(report.upstream_to_client, 300_000);
    let mut rest = Vec::new();
    within("client sees the end", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_reset_peer_is_its_sides_error() {
    for (reset_upstream, end) in [(true, End::UpstreamError), (false, End::ClientError)] {
        let (client, upstream, t) = through([b"", b""]).await;
        let task = tokio::spawn(t);
        let (reset, other) = if reset_upstream {
            (upstream, client)
        } else {
            (client, upstream)
        };
        socket2::SockRef::from(&reset)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(reset);
        let report = within("the end", task).await.unwrap();
        assert_eq!(report.end, end);
        drop(other);
    }
}

#[tokio::test]
async fn a_reader_that_stops_holds_the_relay_at_its_cap_and_loses_nothing() {
    let (client, client_side) = pair().await;
    let (upstream_side, mut upstream) = pair().await;
    // Small socket buffers all along, so that the kernel cannot take the whole
    // message: the writer must wait for the stalled reader.
    for s in [&client, &client_side, &upstream_side, &upstream] {
        let s = socket2::SockRef::from(s);
        s.set_recv_buffer_size(64 * 1024).unwrap();
        s.set_send_buffer_size(64 * 1024).unwrap();
    }
    let mut t = Box::pin(tunnel(sockets(client_side, upstream_side, [b"", b""])));
    let data = random(8 << 20, 4);
    let (mut r, mut w) = client.into_split();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    // The upstream reads nothing: drive the tunnel until the relay has stopped
    // receiving from the client, holding its cap unsent.
    let mut held_max = 0;
    within("the relay stops receiving", async {
        loop {
            tokio::select! {
                biased;
                _ = t.as_mut() => panic!("the tunnel ended"),
                _ = tokio::task::yield_now() => {}
            }
            let (held, _) = t.transfer.held();
            held_max = held_max.max(held);
            if !t.transfer.receiving(0) && held >= ring::CAP {
                break;
            }
        }
    })
    .await;
    assert!(!writer.is_finished(), "the writer was not slowed");
    assert!(
        held_max <= ring::CAP + ring::BURST,
        "held {held_max} buffers, more than the cap and one burst"
    );
    // The upstream reads again: everything arrives, in order.
    let task = tokio::spawn(t);
    let mut got = Vec::new();
    within("upstream reads it all", upstream.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got == expected, "bytes lost or reordered");
    drop(writer.await.unwrap());
    drop(upstream);
    let mut rest = Vec::new();
    let _ = within("client sees the end", r.read_to_end(&mut rest)).await;
    let report = within("the end", task).await.unwrap();
    assert_eq!(report.client_to_upstream, 8 << 20);
}

#[tokio::test]
async fn dropping_a_tunnel_mid_flow_closes_both_sockets_and_leaks_nothing() {
    let (mut client, client_side) = pair().await;
    let (upstream_side, mut upstream) = pair().await;
    // Other tests open and close descriptors at the same time, so the relay's own
    // are followed by number and socket.
    let relay: Vec<_> = [client_side.as_raw_fd(), upstream_side.as_raw_fd()]
        .into_iter()
        .map(|fd| (fd, inode(fd).unwrap()))
        .collect();
    let mut t = Box::pin(tunnel(sockets(client_side, upstream_side, [b"", b""])));
    client.write_all(&random(100_000, 5)).await.unwrap();
    let mut buf = vec![0u8; 1000];
    // Bytes are flowing when the tunnel goes.
    tokio::select! {
        _ = t.as_mut() => panic!("the tunnel ended"),
        n = upstream.read(&mut buf) => assert!(n.unwrap() > 0),
    }
    drop(t);
    // Each peer sees the end (FIN or reset), whatever was in flight.
    for peer in [&mut client, &mut upstream] {
        loop {
            match within("the peer sees the end", peer.read(&mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    drop((client, upstream));
    // The ring closes the relay's sockets with their last completion, and keeps no
    // buffer or slot of the tunnel.
    within("the relay's sockets close", async {
        while relay
            .iter()
            .any(|(fd, was)| inode(*fd).as_ref() == Some(was))
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let shared = ring::current().unwrap();
    within("the ring lets go", async {
        while shared.lock().usage() != (0, 0) {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tunnels_on_one_ring_each_intact() {
    let mut runs = Vec::new();
    for i in 0..200u64 {
        let (client, upstream, t) = through([b"", b""]).await;
        let task = tokio::spawn(t);
        runs.push(tokio::spawn(async move {
            let up = random(64 * 1024 + i as usize, 10 + i);
            let down = random(32 * 1024 + i as usize * 7, 1000 + i);
            let (got_up, got_down) = futures_util::future::join(
                exchange(upstream, down.clone()),
                exchange(client, up.clone()),
            )
            .await;
            assert!(got_up == up, "tunnel {i}: client to upstream differs");
            assert!(got_down == down, "tunnel {i}: upstream to client differs");
            let report = task.await.unwrap();
            assert_eq!(report.client_to_upstream, up.len() as u64);
            assert_eq!(report.upstream_to_client, down.len() as u64);
        }));
    }
    for r in runs {
        within("a tunnel", r).await.unwrap();
    }
}

#[tokio::test]
async fn a_dry_pool_starves_no_tunnel_for_good() {
    // Tunnels whose upstreams read nothing hold what the pool has, until receives
    // fail for want of buffers; a fresh tunnel then waits, and everything arrives once
    // the readers read again.
    let mut stalled = Vec::new();
    // 80 × CAP buffers is more than the pool has.
    for i in 0..80u64 {
        let (client, client_side) = pair().await;
        let (upstream_side, upstream) = pair().await;
        for s in [&client, &client_side, &upstream_side, &upstream] {
            let s = socket2::SockRef::from(s);
            s.set_recv_buffer_size(16 * 1024).unwrap();
            s.set_send_buffer_size(16 * 1024).unwrap();
        }
        let task = tokio::spawn(tunnel(sockets(client_side, upstream_side, [b"", b""])));
        let data = random(512 * 1024, 100 + i);
        let (_r, mut w) = client.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
            (_r, w)
        });
        stalled.push((upstream, data, writer, task));
    }
    let shared = ring::current().unwrap();
    within("the pool runs dry", async {
        while shared.lock().starvations == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (mut client, mut upstream, t) = through([b"", b""]).await;
    let fresh = tokio::spawn(t);
    client.write_all(b"still there?").await.unwrap();
    let mut readers = Vec::new();
    for (mut upstream, data, writer, task) in stalled {
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            assert!(got == data, "a stalled tunnel lost bytes");
            drop(writer.await.unwrap());
            drop(upstream);
            task.await.unwrap()
        }));
    }
    let mut got = [0u8; 12];
    within("the fresh tunnel moves", upstream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"still there?");
    for r in readers {
        within("a stalled tunnel drains", r).await.unwrap();
    }
    drop((client, upstream));
    within("the fresh tunnel ends", fresh).await.unwrap();
}
