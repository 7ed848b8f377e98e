//! Per-client limits: concurrent connections, and WebSocket handshakes per second.
//!
//! A client is an IPv4 address or an IPv6 /64: one subscriber is usually given a
//! whole /64, so keying by full IPv6 address would let a single user take 2^64 turns.
//! An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 client) is
//! the IPv4 address.
//!
//! State lives in shards chosen by a hash of the client, each a small mutex-guarded
//! map, so concurrent accepts rarely wait on each other. Memory is bounded: past
//! [`MAX_TRACKED`] clients, new clients are let through untracked (failing open, and
//! counted) rather than refused, because refusing would turn a flood of distinct
//! addresses into an outage for everyone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Shards per structure: enough that accept loops on many cores seldom meet on one
/// lock, few enough that [`HandshakeRate::sweep`] and `len` stay cheap.
const SHARDS: usize = 64;

/// The most clients one structure tracks. At about 50 bytes an entry, with the maps'
/// spare capacity, this is under 100 MB in the worst case. The cap is kept per shard
/// (1/64 each) so checking it needs only the shard's own lock.
pub const MAX_TRACKED: usize = 1_000_000;

/// A client as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    /// The top 64 bits: the network prefix.
    V6(u64),
}

impl Client {
    fn of(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client::V4(u32::from(v4)),
            IpAddr::V6(v6) => Client::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// A well-mixed hash for choosing a shard; the maps themselves keep std's seeded
    /// hasher, so a chosen set of addresses cannot degrade them.
    fn spread(self) -> u64 {
        let (bits, tag) = match self {
            Client::V4(a) => (u64::from(a), 0),
            Client::V6(p) => (p, 1),
        };
        // Fibonacci hashing: the high bits depend on every input bit.
        (bits ^ tag).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag
    }
}

/// Maps from client to state, split into shards, with a cap on the entries.
#[derive(Debug)]
struct Shards<V> {
    maps: Box<[Mutex<HashMap<Client, V>>]>,
    /// Entries one shard may hold.
    per_shard: usize,
    /// New clients let through untracked because their shard was full.
    overflows: AtomicU64,
}

impl<V> Shards<V> {
    fn new(shards: usize, max_tracked: usize) -> Shards<V> {
        let shards = shards.max(1);
        Shards {
            maps: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_tracked.div_ceil(shards),
            overflows: AtomicU64::new(0),
        }
    }

    fn lock(&self, client: Client) -> MutexGuard<'_, HashMap<Client, V>> {
        let i = (client.spread() >> 32) as usize % self.maps.len();
        lock(&self.maps[i])
    }

    fn len(&self) -> usize {
        self.maps.iter().map(|m| lock(m).len()).sum()
    }

    fn overflowed(&self) {
        self.overflows.fetch_add(1, Relaxed);
    }
}

/// A poisoned lock is taken anyway: no code holding these locks can panic midway,
/// and a limiter that stops working would be worse than a count that is off by one.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Concurrent connections per client (IPv4 address, or IPv6 /64 prefix: one user usually holds a whole /64).
#[derive(Debug)]
pub struct PerIpConnections {
    max: AtomicUsize,
    counts: Shards<usize>,
}

/// One counted connection; the count goes down when it drops.
#[derive(Debug)]
pub struct PerIpGuard {
    owner: Arc<PerIpConnections>,
    /// `None` when let through untracked at the cap: there is nothing to release.
    client: Option<Client>,
}

/// The refusal of [`PerIpConnections::try_acquire`]: the client is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtLimit;

impl fmt::Display for AtLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many connections from this client")
    }
}

impl std::error::Error for AtLimit {}

impl PerIpConnections {
    /// At most `max_per_ip` open connections per client; 0 refuses every connection.
    pub fn new(max_per_ip: usize) -> Self {
        Self::with_cap(max_per_ip, SHARDS, MAX_TRACKED)
    }

    fn with_cap(max_per_ip: usize, shards: usize, max_tracked: usize) -> Self {
        PerIpConnections {
            max: AtomicUsize::new(max_per_ip),
            counts: Shards::new(shards, max_tracked),
        }
    }

    /// Ok(guard) that releases on drop, or Err(AtLimit) when the client is at the limit.
    ///
    /// A new client beyond [`MAX_TRACKED`] gets an untracked guard (see
    /// [`PerIpConnections::overflows`]).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<PerIpGuard, AtLimit> {
        let max = self.max.load(Relaxed);
        let client = Client::of(ip);
        let mut map = self.counts.lock(client);
        let full = map.len() >= self.counts.per_shard;
        let tracked = match map.entry(client) {
            Entry::Occupied(mut e) => {
                if *e.get() >= max {
                    return Err(AtLimit);
                }
                *e.get_mut() += 1;
                true
            }
            Entry::Vacant(_) if max == 0 => return Err(AtLimit),
            Entry::Vacant(_) if full => {
                // Fail open: see the module doc.
                self.counts.overflowed();
                false
            }
            Entry::Vacant(e) => {
                e.insert(1);
                true
            }
        };
        drop(map);
        Ok(PerIpGuard {
            owner: Arc::clone(self),
            client: tracked.then_some(client),
        })
    }

    /// Changes the limit (on reload). Open connections stay counted; a lower limit
    /// closes nothing and only refuses new ones until enough have ended.
    pub fn set_max(&self, max_per_ip: usize) {
        self.max.store(max_per_ip, Relaxed);
    }

    /// Clients with at least one counted connection.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no client has a counted connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many connections were let through untracked because [`MAX_TRACKED`]
    /// clients were already tracked: nonzero means the limit was not enforced.
    pub fn overflows(&self) -> u64 {
        self.counts.overflows.load(Relaxed)
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let Some(client) = self.client else { return };
        let mut map = self.owner.counts.lock(client);
        if let Entry::Occupied(mut e) = map.entry(client) {
            // Removed at zero, so the map holds only clients with open connections.
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }
}

/// Handshakes per second per client: a token bucket per client (same IP keying), burst = rate unless given.
#[derive(Debug)]
pub struct HandshakeRate {
    /// Tokens per second, as `f64` bits. Read apart from `burst`: a reload racing a
    /// handshake can pair the new rate with the old burst for that one call.
    rate: AtomicU64,
    /// Bucket size, as `f64` bits.
    burst: AtomicU64,
    buckets: Shards<Bucket>,
}

/// A client's tokens as of `last`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        // Concurrent callers may pass slightly older instants; time never runs back.
        if now > self.last {
            self.tokens += now.duration_since(self.last).as_secs_f64() * rate;
            self.last = now;
        }
        self.tokens = self.tokens.min(burst);
    }
}

impl HandshakeRate {
    /// `per_second` tokens a second into buckets of `burst` tokens.
    ///
    /// A burst that is not positive means `per_second`; any burst is at least 1, as a
    /// smaller bucket could never admit anything. A rate that is negative or NaN is 0
    /// (the burst, then nothing); an infinite rate is no limit.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self::with_cap(per_second, burst, SHARDS, MAX_TRACKED)
    }

    fn with_cap(per_second: f64, burst: f64, shards: usize, max_tracked: usize) -> Self {
        let r = HandshakeRate {
            rate: AtomicU64::new(0),
            burst: AtomicU64::new(0),
            buckets: Shards::new(shards, max_tracked),
        };
        r.set_rate(per_second, burst);
        r
    }

    /// Whether a handshake from `ip` at `now` may proceed (consumes a token if so).
    ///
    /// A new client beyond [`MAX_TRACKED`] is allowed untracked (see
    /// [`HandshakeRate::overflows`]).
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = self.limits();
        if rate == f64::INFINITY {
            return true;
        }
        let client = Client::of(ip);
        let mut map = self.buckets.lock(client);
        let full = map.len() >= self.buckets.per_shard;
        match map.entry(client) {
            Entry::Occupied(mut e) => {
                let bucket = e.get_mut();
                bucket.refill(now, rate, burst);
                let allowed = bucket.tokens >= 1.0;
                if allowed {
                    bucket.tokens -= 1.0;
                }
                allowed
            }
            Entry::Vacant(_) if full => {
                // Fail open: see the module doc.
                self.buckets.overflowed();
                true
            }
            Entry::Vacant(e) => {
                e.insert(Bucket {
                    tokens: burst - 1.0,
                    last: now,
                });
                true
            }
        }
    }

    /// Forget buckets that are full again (they are equivalent to no entry), so memory
    /// follows the number of recently active clients. Call periodically.
    pub fn sweep(&self, now: Instant) {
        let (rate, burst) = self.limits();
        for shard in &self.buckets.maps {
            let mut map = lock(shard);
            map.retain(|_, b| {
                b.refill(now, rate, burst);
                b.tokens < burst
            });
            // A map keeps its largest size; give back memory after a flood has passed.
            let len = map.len();
            if map.capacity() > 64 && map.capacity() / 4 > len {
                map.shrink_to(len * 2);
            }
        }
    }

    /// Changes rate and burst (on reload), with the meanings [`HandshakeRate::new`]
    /// gives them. Buckets keep their tokens, down to a smaller burst.
    pub fn set_rate(&self, per_second: f64, burst: f64) {
        let rate = if per_second > 0.0 { per_second } else { 0.0 };
        let burst = if burst > 0.0 { burst } else { rate };
        self.rate.store(rate.to_bits(), Relaxed);
        self.burst.store(burst.max(1.0).to_bits(), Relaxed);
    }

    fn limits(&self) -> (f64, f64) {
        (
            f64::from_bits(self.rate.load(Relaxed)),
            f64::from_bits(self.burst.load(Relaxed)),
        )
    }

    /// Tracked clients, for tests and metrics.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many handshakes were allowed untracked because [`MAX_TRACKED`] clients
    /// were already tracked: nonzero means the limit was not enforced for them.
    pub fn overflows(&self) -> u64 {
        self.buckets.overflows.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_stop_at_the_limit_and_resume_on_release() {
        let c = Arc::new(PerIpConnections::new(2));
        let a = c.try_acquire(ip("192.0.2.1")).unwrap();
        let b = c.try_acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(c.try_acquire(ip("192.0.2.1")).err(), Some(AtLimit));
        assert!(
            c.try_acquire(ip("192.0.2.2")).is_ok(),
            "other clients are not affected"
        );
        drop(a);
        let a = c.try_acquire(ip("192.0.2.1")).unwrap();
        drop((a, b));
        assert!(c.is_empty(), "entries go when their count reaches zero");
    }

    #[test]
    fn the_limit_can_change_without_losing_count() {
        let c = Arc::new(PerIpConnections::new(1));
        let a = c.try_acquire(ip("192.0.2.1")).unwrap();
        c.set_max(3);
        let b = c.try_acquire(ip("192.0.2.1")).unwrap();
        c.set_max(1);
        drop(a);
        assert!(
            c.try_acquire(ip("192.0.2.1")).is_err(),
            "still over the lowered limit"
        );
        drop(b);
        assert!(c.try_acquire(ip("192.0.2.1")).is_ok());
        c.set_max(0);
        assert!(
            c.try_acquire(ip("192.0.2.9")).is_err(),
            "0 refuses everyone"
        );
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        let c = Arc::new(PerIpConnections::new(1));
        let _a = c.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            c.try_acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
                .is_err()
        );
        assert!(c.try_acquire(ip("2001:db8:1:3::1")).is_ok());
        assert!(c.try_acquire(ip("2001:db8:1:2::1")).is_err());
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_client() {
        let c = Arc::new(PerIpConnections::new(1));
        let _a = c.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(c.try_acquire(ip("::ffff:192.0.2.1")).is_err());
        // Not a /64 of its own either: other mapped addresses are other clients.
        assert!(c.try_acquire(ip("::ffff:192.0.2.2")).is_ok());
    }

    #[test]
    fn connections_fail_open_at_the_tracking_cap() {
        let c = Arc::new(PerIpConnections::with_cap(1, 1, 2));
        let a = c.try_acquire(ip("192.0.2.1")).unwrap();
        let _b = c.try_acquire(ip("192.0.2.2")).unwrap();
        let extra: Vec<_> = (0..3)
            .map(|_| c.try_acquire(ip("192.0.2.3")).unwrap())
            .collect();
        assert_eq!(c.overflows(), 3);
        assert_eq!(c.len(), 2);
        assert!(
            c.try_acquire(ip("192.0.2.1")).is_err(),
            "tracked clients stay limited"
        );
        drop(extra);
        assert_eq!(c.len(), 2, "untracked guards release nothing");
        drop(a);
        let _c = c.try_acquire(ip("192.0.2.3")).unwrap();
        assert!(
            c.try_acquire(ip("192.0.2.3")).is_err(),
            "tracked once there is room"
        );
        assert_eq!(c.overflows(), 3);
    }

    #[test]
    fn concurrent_acquire_and_release_leave_nothing_behind() {
        let c = Arc::new(PerIpConnections::new(4));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..2_000u32 {
                        let guard =
                            c.try_acquire(IpAddr::from([10, 0, (t % 2) as u8, (i % 7) as u8]));
                        drop(guard);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(c.is_empty());
    }

    #[test]
    fn a_bucket_allows_the_burst_then_the_rate() {
        let r = HandshakeRate::new(2.0, 5.0);
        let t0 = Instant::now();
        let client = ip("192.0.2.1");
        assert_eq!((0..7).filter(|_| r.allow(client, t0)).count(), 5);
        // Half a second is one token at 2 a second.
        let t1 = t0 + Duration::from_millis(500);
        assert!(r.allow(client, t1));
        assert!(!r.allow(client, t1));
        // Over ten seconds, about twenty.
        let allowed = (1..=100)
            .filter(|i| r.allow(client, t1 + Duration::from_millis(100 * i)))
            .count();
        assert!((19..=21).contains(&allowed), "{allowed}");
        assert!(
            r.allow(ip("192.0.2.2"), t1),
            "other clients have their own bucket"
        );
    }

    #[test]
    fn a_bucket_refills_only_up_to_the_burst() {
        let r = HandshakeRate::new(10.0, 3.0);
        let t0 = Instant::now();
        let client = ip("2001:db8::1");
        assert!(r.allow(client, t0));
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| r.allow(client, later)).count(), 3);
        // The same /64 shares the bucket.
        assert!(!r.allow(ip("2001:db8::2"), later));
    }

    #[test]
    fn burst_defaults_to_the_rate_and_is_at_least_one() {
        let t0 = Instant::now();
        let r = HandshakeRate::new(4.0, 0.0);
        assert_eq!((0..10).filter(|_| r.allow(ip("192.0.2.1"), t0)).count(), 4);
        let r = HandshakeRate::new(0.5, f64::NAN);
        assert_eq!((0..10).filter(|_| r.allow(ip("192.0.2.1"), t0)).count(), 1);
        assert!(r.allow(ip("192.0.2.1"), t0 + Duration::from_secs(2)));
    }

    #[test]
    fn odd_rates_never_panic() {
        let t0 = Instant::now();
        let client = ip("192.0.2.1");
        let r = HandshakeRate::new(f64::INFINITY, 1.0);
        assert!((0..100).all(|_| r.allow(client, t0)));
        assert!(r.is_empty(), "no limit tracks nothing");
        for (rate, burst) in [
            (0.0, 0.0),
            (-1.0, 5.0),
            (f64::NAN, f64::NAN),
            (1.0, f64::INFINITY),
        ] {
            r.set_rate(rate, burst);
            for i in 0..5 {
                r.allow(client, t0 + Duration::from_secs(i));
            }
            r.sweep(t0 + Duration::from_secs(10));
        }
        r.set_rate(0.0, 2.0);
        assert_eq!(
            (0..5).filter(|_| r.allow(ip("192.0.2.9"), t0)).count(),
            2,
            "rate 0: the burst, then nothing"
        );
        assert!(!r.allow(ip("192.0.2.9"), t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn an_earlier_instant_neither_refills_nor_panics() {
        let r = HandshakeRate::new(1.0, 1.0);
        let t1 = Instant::now() + Duration::from_secs(10);
        assert!(r.allow(ip("192.0.2.1"), t1));
        assert!(!r.allow(ip("192.0.2.1"), t1 - Duration::from_secs(5)));
        assert!(r.allow(ip("192.0.2.1"), t1 + Duration::from_secs(1)));
    }

    #[test]
    fn sweep_forgets_full_buckets_and_keeps_partial_ones() {
        let r = HandshakeRate::new(1.0, 10.0);
        let t0 = Instant::now();
        r.allow(ip("192.0.2.1"), t0);
        for _ in 0..10 {
            r.allow(ip("192.0.2.2"), t0);
        }
        assert_eq!(r.len(), 2);
        // After 5 s the first bucket (9 + 5) is full, the second (0 + 5) is not.
        r.sweep(t0 + Duration::from_secs(5));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (0..10)
                .filter(|_| r.allow(ip("192.0.2.2"), t0 + Duration::from_secs(5)))
                .count(),
            5
        );
        r.sweep(t0 + Duration::from_secs(60));
        assert!(r.is_empty());
    }

    #[test]
    fn sweep_gives_memory_back_after_a_flood() {
        let r = HandshakeRate::with_cap(1.0, 1.0, 1, MAX_TRACKED);
        let t0 = Instant::now();
        for i in 0..5_000u32 {
            r.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        r.sweep(t0 + Duration::from_secs(2));
        assert!(r.is_empty());
        assert!(lock(&r.buckets.maps[0]).capacity() < 5_000);
    }

    #[test]
    fn handshakes_fail_open_at_the_tracking_cap() {
        let r = HandshakeRate::with_cap(1.0, 1.0, 1, 2);
        let t0 = Instant::now();
        assert!(r.allow(ip("192.0.2.1"), t0));
        assert!(r.allow(ip("192.0.2.2"), t0));
        assert!(
            (0..5).all(|_| r.allow(ip("192.0.2.3"), t0)),
            "untracked: allowed"
        );
        assert_eq!(r.overflows(), 5);
        assert!(
            !r.allow(ip("192.0.2.1"), t0),
            "tracked clients stay limited"
        );
        assert_eq!(r.len(), 2);
        r.sweep(t0 + Duration::from_secs(1));
        assert!(r.allow(ip("192.0.2.3"), t0 + Duration::from_secs(1)));
        assert!(
            !r.allow(ip("192.0.2.3"), t0 + Duration::from_secs(1)),
            "tracked once there is room"
        );
    }

    #[test]
    fn the_default_cap_is_spread_over_the_shards() {
        let c = PerIpConnections::new(1);
        assert_eq!(c.counts.maps.len(), SHARDS);
        assert_eq!(c.counts.per_shard * SHARDS, MAX_TRACKED);
    }
}
