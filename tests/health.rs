//! Server health: passive ejection after failed connects and recovery, active health
//! checks, fail-over before a byte was sent and never after.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn server_up(text: &str, upstream: &str, server: std::net::SocketAddr) -> f64 {
    metric(
        text,
        &format!("sluice_upstream_server_up{{server=\"{server}\",upstream=\"{upstream}\"}}"),
    )
}

#[tokio::test]
async fn a_server_failing_connects_is_ejected_then_tried_again() {
    let good = named_ws_backend("good").await;
    // A port that refuses now and will listen later.
    let flaky = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flaky_addr = flaky.local_addr().unwrap();
    drop(flaky);
    let gw = gateway_for(
        &[flaky_addr, good.addr],
        "max_fails = 2\nfail_timeout = \"300ms\"\n",
    )
    .await;
    for _ in 0..6 {
        let (_, name) = ws_connect_which(&gw.url("/")).await;
        assert_eq!(name, "good");
    }
    let text = metrics_text(&gw).await;
    assert_eq!(
        server_up(&text, "backend", flaky_addr),
        0.0,
        "ejected after 2 failures"
    );
    // While ejected the flaky server gets no attempts: connects that fail over would
    // show as more upstream connect time than the good server's own.
    let attempts_before = metric(
        &text,
        "sluice_upstream_connect_duration_seconds_count{upstream=\"backend\"}",
    );
    for _ in 0..4 {
        let _ = ws_connect_which(&gw.url("/")).await;
    }
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_upstream_connect_duration_seconds_count{upstream=\"backend\"}"
        ),
        attempts_before + 4.0
    );

    // The server comes back; after the back-off it is tried and used again.
    let revived = TcpListener::bind(flaky_addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = revived.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = tokio_tungstenite::accept_async(s).await;
            });
        }
    });
    eventually("the revived server is up again", || async {
        server_up(&metrics_text(&gw).await, "backend", flaky_addr) == 1.0
    })
    .await;
    eventually("the revived server gets traffic", || async {
        let _ = raw_exchange(gw.addr, handshake_request("/", "").as_bytes()).await;
        accepted.load(Ordering::SeqCst) > 0
    })
    .await;
}

#[tokio::test]
async fn active_health_checks_take_a_failing_server_out_and_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let (checked, _) = http_backend(move |req: Request<Incoming>| {
        let h = h.clone();
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"checked")));
            if req.uri().path() == "/health" && !h.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r.headers_mut()
                .insert("x-backend", "checked".parse().unwrap());
            r
        }
    })
    .await;
    let (other, _) = http_backend(|_req: Request<Incoming>| async move {
        let mut r = Response::new(Full::new(Bytes::from_static(b"other")));
        r.headers_mut()
            .insert("x-backend", "other".parse().unwrap());
        r
    })
    .await;
    let gw = gateway_for(
        &[checked, other],
        "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"50ms\", fails = 2, passes = 2 }\n",
    )
    .await;
    let served_by = |gw: &TestGateway| {
        let addr = gw.addr;
        async move {
            let mut names = Vec::new();
            let mut c = HttpClient::connect(addr).await;
            for _ in 0..6 {
                let (_, headers, _) = c.get("/").await;
                names.push(headers["x-backend"].to_str().unwrap().to_owned());
            }
            names
        }
    };
    assert!(served_by(&gw).await.contains(&"checked".to_owned()));

    healthy.store(false, Ordering::SeqCst);
    eventually("the failing server is marked down", || async {
        server_up(&metrics_text(&gw).await, "backend", checked) == 0.0
    })
    .await;
    assert!(served_by(&gw).await.iter().all(|n| n == "other"));

    healthy.store(true, Ordering::SeqCst);
    eventually("the server is up again", || async {
        server_up(&metrics_text(&gw).await, "backend", checked) == 1.0
    })
    .await;
    assert!(served_by(&gw).await.contains(&"checked".to_owned()));
}

#[tokio::test]
async fn tcp_health_checks_notice_a_closed_port() {
    let good = named_ws_backend("good").await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let gw = gateway_for(
        &[gone_addr, good.addr],
        "health_check = { tcp = true, interval = \"100ms\", timeout = \"50ms\", fails = 1 }\n",
    )
    .await;
    eventually("the closed port is marked down", || async {
        server_up(&metrics_text(&gw).await, "backend", gone_addr) == 0.0
    })
    .await;
}

#[tokio::test]
async fn when_every_server_is_down_they_are_still_tried() {
    let good = named_ws_backend("good").await;
    let gw = gateway_for(
        &[good.addr],
        "health_check = { path = \"/nothing-here\", interval = \"100ms\", timeout = \"50ms\", fails = 1 }\n",
    )
    .await;
    eventually("the only server is marked down", || async {
        server_up(&metrics_text(&gw).await, "backend", good.addr) == 0.0
    })
    .await;
    let (_, name) = ws_connect_which(&gw.url("/")).await;
    assert_eq!(name, "good");
}

#[tokio::test]
async fn a_request_is_retried_elsewhere_only_before_a_byte_was_sent() {
    // First server: takes the request and resets the connection without answering.
    let (resetter, resets) = raw_backend(|mut s, _| async move {
        socket2::SockRef::from(&s)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        let _ = s.flush().await;
        drop(s);
    })
    .await;
    let (mirror, mirrored) = mirror_backend().await;
    let gw = gateway_for(&[resetter, mirror], "").await;
    // Round robin starts at the resetter: the request reached it, so it is not sent
    // again (that could repeat a payment); the client gets a 502.
    let resp = raw_exchange(
        gw.addr,
        b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert_eq!(resets.load(Ordering::SeqCst), 1);
    assert_eq!(
        mirrored.load(Ordering::SeqCst),
        0,
        "the request was sent twice"
    );

    // A server that cannot be connected is skipped before anything is sent.
    let dead = dead_addr().await;
    let gw = gateway_for(&[dead, mirror], "").await;
    for _ in 0..2 {
        let resp = raw_exchange(
            gw.addr,
            b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert_eq!(status_of(&resp), 200, "{resp}");
    }
}
