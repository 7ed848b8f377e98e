//! What updating metrics costs on the hot path: a counter, a gauge, a histogram, and
//! the per-status request counter, each as the proxy calls them per request, per
//! message or per tunnel. A counting allocator proves that none of them allocates.
//!
//! `cargo bench --bench metrics`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use sluice::metrics::{HandshakeOutcome, Metrics};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed straight to the system allocator; only a counter is
// added.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f`, run `n` times.
fn allocations(n: u64, mut f: impl FnMut()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        f();
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn bench(c: &mut Criterion) {
    let metrics = Metrics::new();
    let route = metrics.route("chat");
    let listener = metrics.listener("http");
    // The first use of a status creates its series; that is once per status for the
    // process, not per request.
    route.http_request(StatusCode::OK);

    let per_request = || {
        route.http_request(black_box(StatusCode::OK));
        route.http_duration.observe(black_box(0.000_42));
    };
    let per_message = || route.client_to_upstream.inc_by(black_box(64));
    let per_tunnel = || {
        listener.total.inc();
        listener.active.inc();
        route.handshake(HandshakeOutcome::Upgraded);
        route.tunnels_active.inc();
        route.tunnels_active.dec();
        route.tunnel_duration.observe(black_box(12.5));
        listener.active.dec();
    };
    for (name, allocs) in [
        ("per request", allocations(10_000, per_request)),
        ("per message", allocations(10_000, per_message)),
        ("per tunnel", allocations(10_000, per_tunnel)),
    ] {
        println!("metrics {name}: {allocs} allocations in 10000 updates");
        assert_eq!(allocs, 0, "a hot-path metric update allocated");
    }

    let mut g = c.benchmark_group("metrics");
    g.bench_function("per request (status counter + latency histogram)", |b| {
        b.iter(per_request)
    });
    g.bench_function("per message (bytes counter)", |b| b.iter(per_message));
    g.bench_function("per tunnel (gauges, handshake counter, duration)", |b| {
        b.iter(per_tunnel)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
