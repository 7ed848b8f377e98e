//! An upstream's background work: active health checks, re-resolving servers given
//! by host name, and the `sluice_upstream_server_up` gauges (ejections end by time).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::{MissedTickBehavior, interval};

use super::{Server, Upstream, connect};
use crate::config::HealthCheck;

/// How often the up gauges are brought in line with ejections that ended.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

pub(super) fn spawn(upstream: Arc<Upstream>) {
    let stop = upstream.maintenance.clone();
    let check = upstream.health_check.clone();
    let resolve = upstream
        .servers
        .iter()
        .any(|s| s.resolve)
        .then_some(upstream.resolve_interval);
    // The task holds the upstream weakly: a gateway that is dropped without a reload
    // does not keep it alive.
    let weak = Arc::downgrade(&upstream);
    drop(upstream);
    tokio::spawn(async move {
        let mut gauges = interval(GAUGE_REFRESH);
        let mut checks = interval(
            check
                .as_ref()
                .map_or(Duration::from_secs(3600), |c| c.interval),
        );
        let mut resolves = interval(resolve.unwrap_or(Duration::from_secs(3600)));
        for t in [&mut gauges, &mut checks, &mut resolves] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        // The first resolve tick fires at once; the load just resolved every name.
        resolves.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = gauges.tick() => {
                    let Some(up) = weak.upgrade() else { return };
                    for s in up.servers.iter() {
                        s.refresh_gauge();
                    }
                }
                _ = checks.tick(), if check.is_some() => {
                    let Some(check) = &check else { continue };
                    if !run_checks(&weak, check).await {
                        return;
                    }
                }
                _ = resolves.tick(), if resolve.is_some() => {
                    let Some(up) = weak.upgrade() else { return };
                    for s in up.servers.iter().filter(|s| s.resolve) {
                        resolve_again(s).await;
                    }
                }
            }
        }
    });
}

/// Checks every server at once; false when the upstream is gone.
async fn run_checks(weak: &Weak<Upstream>, check: &HealthCheck) -> bool {
    let Some(up) = weak.upgrade() else {
        return false;
    };
    let probes = up.servers.iter().map(|s| {
        let up = &up;
        async move {
            let ok = tokio::time::timeout(check.timeout, probe(up, s, check.path.as_deref()))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
            if let Err(why) = &ok {
                tracing::debug!(upstream = %up.name, server = %s.name, why, "health check failed");
            }
            s.check_result(ok.is_ok(), check.fails, check.passes);
        }
    });
    futures_util::future::join_all(probes).await;
    true
}

/// One check: connect (with TLS when the upstream uses it), and with a path, GET it
/// (in the upstream's HTTP version) and expect a 2xx or 3xx.
async fn probe(up: &Upstream, server: &Server, path: Option<&str>) -> Result<(), String> {
    let addr = server.addrs().next().ok_or("no address")?;
    let stream = up
        .connector
        .connect(addr, connect::host_of(&server.name), None)
        .await
        .map_err(|e| e.to_string())?;
    let Some(path) = path else { return Ok(()) };
    let status = if up.speaks_h2() {
        let (mut sender, conn) = up
            .h2
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let scheme = if up.tls.is_some() { "https" } else { "http" };
        let req = Request::get(format!(
            "{scheme}://{}{path}",
            server.host.to_str().unwrap_or("localhost")
        ))
        .header(header::USER_AGENT, "sluice-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
        sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?
            .status()
    } else {
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, server.host.clone())
            .header(header::USER_AGENT, "sluice-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?
            .status()
    };
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Resolves a server's host name again; a failure keeps the last good addresses.
async fn resolve_again(server: &Server) {
    match tokio::net::lookup_host(&*server.name).await {
        Ok(addrs) => server.set_addrs(addrs.collect()),
        Err(e) => {
            tracing::warn!(server = %server.name, error = %e, "resolving failed; keeping the last addresses")
        }
    }
}
