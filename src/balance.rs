//! Choosing an upstream server: the balancing policies, and the request key that
//! consistent hashing uses.
//!
//! Pure logic over server indices; nothing here knows about sockets. A [`Balancer`] is
//! built once per upstream configuration and is immutable afterwards except for its
//! atomic cursors, so requests choose concurrently without a lock. Each choice is a
//! whole order rather than one server: the choice first, then the fallbacks a request
//! fails over to, with servers that are down last.

mod key;

pub use key::HashKey;

use std::cell::Cell;
use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The longest round-robin schedule. Larger weight sums are scaled down to about this
/// total, keeping proportions to within one part in the scaled weight; 4,096 `u32`s is
/// 16 KiB per upstream, and building it costs O(length × servers) once per load.
const SCHEDULE_CAP: u64 = 4096;

/// How a [`Balancer`] picks the first server to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// The lowest open connections per weight, ties taken in turn.
    LeastConnections,
    /// The less loaded (per weight) of two servers drawn at random by weight.
    RandomTwo,
    /// Weighted rendezvous hashing of a request key; round robin without a key.
    Hash,
}

/// Orders an upstream's servers for one request under a [`Policy`].
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    /// Each at least 1.
    weights: Box<[u32]>,
    /// xxh3 of each server's identity: the per-server seed of rendezvous hashing.
    seeds: Box<[u64]>,
    /// All weights equal: rendezvous can compare raw hashes, exactly, without floats.
    uniform: bool,
    /// Server indices in smooth weighted round-robin order; never empty when there
    /// are servers.
    schedule: Box<[u32]>,
    /// Round robin's position in `schedule`, and least connections' tie rotation.
    cursor: AtomicUsize,
    /// Round robin's second cursor, for picks whose scheduled server is down.
    spill: AtomicUsize,
}

/// One server's facts for one request, read once so that sorting sees a consistent
/// snapshot even while loads and health change underneath.
#[derive(Debug, Clone, Copy)]
struct Slot {
    index: usize,
    down: bool,
    /// Load (least connections, random two) or rendezvous score (hash).
    rank: u64,
}

thread_local! {
    /// Per-thread slot buffer, reused so that ordering allocates only while a thread's
    /// buffer first grows to the server count.
    static SCRATCH: Cell<Vec<Slot>> = const { Cell::new(Vec::new()) };
}

impl Balancer {
    /// A balancer over `servers`, each an identity and a weight.
    ///
    /// The identity (such as `"10.0.0.1:80"`) seeds consistent hashing, so it must be
    /// the same in every replica and across restarts, and distinct per server; the
    /// other policies ignore it. A weight of 0 counts as 1. Never panics.
    pub fn new(policy: Policy, servers: &[(impl AsRef<[u8]>, u32)]) -> Balancer {
        let weights: Box<[u32]> = servers.iter().map(|(_, w)| (*w).max(1)).collect();
        let seeds = servers.iter().map(|(id, _)| xxh3_64(id.as_ref())).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        Balancer {
            policy,
            schedule: smooth_schedule(&weights),
            weights,
            seeds,
            uniform,
            cursor: AtomicUsize::new(0),
            spill: AtomicUsize::new(0),
        }
    }

    /// Writes into `out` (cleared first) every server index exactly once, in the order
    /// a request should try them: the choice first, then fallbacks for fail-over.
    ///
    /// `key`: the hash key bytes (Policy::Hash only; None = fall back to round robin).
    /// `load(i)`: server i's open connections (used by LeastConnections, RandomTwo).
    /// `healthy(i)`: whether server i may get new traffic. Unhealthy servers go after
    /// all healthy ones in `out` (so they are only used when all are down), still every
    /// index once. Each callback is called at most once per server.
    pub fn order(
        &self,
        key: Option<&[u8]>,
        load: impl Fn(usize) -> u64,
        healthy: impl Fn(usize) -> bool,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let n = self.weights.len();
        if n == 0 {
            return;
        }
        // Taking the buffer (leaving an empty one) instead of borrowing it means a
        // callback that re-enters `order` gets a fresh buffer instead of a panic.
        let mut slots = SCRATCH.try_with(Cell::take).unwrap_or_default();
        slots.clear();
        let needs_load = matches!(self.policy, Policy::LeastConnections | Policy::RandomTwo);
        slots.extend((0..n).map(|index| Slot {
            index,
            down: !healthy(index),
            rank: if needs_load { load(index) } else { 0 },
        }));
        match (self.policy, key) {
            (Policy::RoundRobin, _) | (Policy::Hash, None) => self.round_robin(&slots, out),
            (Policy::LeastConnections, _) => self.least_connections(&mut slots, out),
            (Policy::RandomTwo, _) => self.random_two(&slots, out),
            (Policy::Hash, Some(key)) => self.rendezvous(key, &mut slots, out),
        }
        let _ = SCRATCH.try_with(|cell| cell.set(slots));
    }

    fn weight(&self, i: usize) -> u64 {
        u64::from(self.weights[i])
    }

    /// The scheduled server, or when it is down, one drawn among the healthy by weight.
    fn round_robin(&self, slots: &[Slot], out: &mut Vec<usize>) {
        let pos = self.cursor.fetch_add(1, Relaxed) % self.schedule.len();
        let mut first = self.schedule[pos] as usize;
        if slots[first].down {
            // Walking on along the schedule would hand a down server's share to
            // whichever server follows it; a separate cursor over the healthy servers'
            // weights spreads it in proportion instead.
            let healthy_total: u64 = slots
                .iter()
                .filter(|s| !s.down)
                .map(|s| self.weight(s.index))
                .sum();
            if healthy_total > 0 {
                let target = self.spill.fetch_add(1, Relaxed) as u64 % healthy_total;
                first = self
                    .nth_by_weight(slots, |s| !s.down, target)
                    .unwrap_or(first);
            }
        }
        push_rotation(slots, first, None, out);
    }

    /// Lowest load per weight first; servers tied for the lowest take turns.
    fn least_connections(&self, slots: &mut [Slot], out: &mut Vec<usize>) {
        slots.sort_unstable_by(|a, b| {
            a.down
                .cmp(&b.down)
                .then_with(|| self.by_ratio(a, b))
                .then(a.index.cmp(&b.index))
        });
        let best = slots[0];
        let tied = slots
            .iter()
            .take_while(|s| s.down == best.down && self.by_ratio(s, &best) == Ordering::Equal)
            .count();
        // Rotating only the tied group shares it evenly; rotating all indices and
        // skipping the busier ones would favour whichever server follows a busy one.
        let turn = self.cursor.fetch_add(1, Relaxed) % tied.max(1);
        slots[..tied].rotate_left(turn);
        out.extend(slots.iter().map(|s| s.index));
    }

    /// Power of two choices: two distinct servers drawn by weight, the less loaded per
    /// weight first, then the other, then the rest from a random start.
    fn random_two(&self, slots: &[Slot], out: &mut Vec<usize>) {
        let any_up = slots.iter().any(|s| !s.down);
        // Draw among the healthy; only when none is left, among all.
        let eligible = |s: &Slot| !s.down || !any_up;
        let total: u64 = slots
            .iter()
            .filter(|s| eligible(s))
            .map(|s| self.weight(s.index))
            .sum();
        let Some(a) = self.nth_by_weight(slots, eligible, fastrand::u64(0..total.max(1))) else {
            // Unreachable (there is a server, and every weight is positive); still an order.
            push_rotation(slots, 0, None, out);
            return;
        };
        let rest = total - self.weight(a);
        let b = if rest == 0 {
            None
        } else {
            self.nth_by_weight(
                slots,
                |s| eligible(s) && s.index != a,
                fastrand::u64(0..rest),
            )
        };
        let (first, second) = match b {
            Some(b) if self.by_ratio(&slots[b], &slots[a]) == Ordering::Less => (b, Some(a)),
            Some(b) => (a, Some(b)),
            None => (a, None),
        };
        out.push(first);
        out.extend(second);
        let start = fastrand::usize(0..slots.len());
        push_rotation(slots, start, Some((first, second)), out);
    }

    /// Highest rendezvous score first.
    fn rendezvous(&self, key: &[u8], slots: &mut [Slot], out: &mut Vec<usize>) {
        // The key is hashed once and each server mixes in only its seed: O(key + n)
        // rather than hashing a long header value once per server.
        let key = xxh3_64(key).to_le_bytes();
        for s in slots.iter_mut() {
            let h = xxh3_64_with_seed(&key, self.seeds[s.index]);
            s.rank = if self.uniform {
                h
            } else {
                weighted_score(h, self.weights[s.index]).to_bits()
            };
        }
        slots.sort_unstable_by(|a, b| {
            a.down
                .cmp(&b.down)
                .then(b.rank.cmp(&a.rank))
                // Only on a 64-bit collision; the seed keeps it independent of order.
                .then(self.seeds[a.index].cmp(&self.seeds[b.index]))
                .then(a.index.cmp(&b.index))
        });
        out.extend(slots.iter().map(|s| s.index));
    }

    /// `a`'s load per weight against `b`'s, exactly: load_a * weight_b vs
    /// load_b * weight_a in 128 bits, which cannot overflow.
    fn by_ratio(&self, a: &Slot, b: &Slot) -> Ordering {
        let left = u128::from(a.rank) * u128::from(self.weight(b.index));
        let right = u128::from(b.rank) * u128::from(self.weight(a.index));
        left.cmp(&right)
    }

    /// The server at `target` (< the sum of their weights) when the servers passing
    /// `keep` are laid end to end, each as long as its weight.
    fn nth_by_weight(
        &self,
        slots: &[Slot],
        keep: impl Fn(&Slot) -> bool,
        target: u64,
    ) -> Option<usize> {
        let mut end = 0;
        for s in slots.iter().filter(|s| keep(s)) {
            end += self.weight(s.index);
            if target < end {
                return Some(s.index);
            }
        }
        None
    }
}

/// Appends, from `start` round in index order, the healthy servers and then the down
/// ones, except those already placed (`skip`).
fn push_rotation(
    slots: &[Slot],
    start: usize,
    skip: Option<(usize, Option<usize>)>,
    out: &mut Vec<usize>,
) {
    let n = slots.len();
    let placed = |i: usize| skip.is_some_and(|(a, b)| i == a || Some(i) == b);
    for down in [false, true] {
        for j in 0..n {
            let i = (start + j) % n;
            if slots[i].down == down && !placed(i) {
                out.push(i);
            }
        }
    }
}

/// `weight / -ln(u)` with `u` in (0, 1) taken from the hash: the highest of these is
/// server i with probability weight_i / Σ weights, and stays so as servers come and go.
///
/// `ln` may differ between platforms' math libraries in the last bit, which can only
/// matter for keys whose two best scores tie to within that bit.
fn weighted_score(hash: u64, weight: u32) -> f64 {
    // The top 53 bits, centred in their interval: never 0, never 1.
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    // Finite and positive, so its bit pattern orders like the number.
    f64::from(weight) / -u.ln()
}

/// The smooth weighted round-robin sequence (nginx's): weights [5, 1, 1] give
/// a a b a c a a, spreading each server's turns out rather than bunching them.
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let mut scaled: Vec<u64> = weights.iter().map(|&w| u64::from(w) / divisor).collect();
    let sum: u64 = scaled.iter().sum();
    if sum > SCHEDULE_CAP {
        // Proportions kept to within rounding; every server keeps at least one turn.
        // w < 2^32 and the cap is 2^12, so the product cannot overflow.
        for w in &mut scaled {
            *w = (*w * SCHEDULE_CAP / sum).max(1);
        }
    }
    let total: u64 = scaled.iter().sum();
    let total_signed = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; scaled.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        // The highest current value after adding each weight; the lowest index on ties.
        let mut best = (0, i64::MIN);
        for (i, (c, &w)) in current.iter_mut().zip(&scaled).enumerate() {
            // Each scaled weight is at most the cap or 1; no overflow.
            *c += w as i64;
            if *c > best.1 {
                best = (i, *c);
            }
        }
        current[best.0] -= total_signed;
        // A server list cannot hold 2^32 entries in memory, so the index fits.
        schedule.push(best.0 as u32);
    }
    schedule.into_boxed_slice()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: [Policy; 4] = [
        Policy::RoundRobin,
        Policy::LeastConnections,
        Policy::RandomTwo,
        Policy::Hash,
    ];

    fn identities(weights: &[u32]) -> Vec<(String, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (format!("10.0.0.{i}:80"), w))
            .collect()
    }

    fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
        Balancer::new(policy, &identities(weights))
    }

    fn order(b: &Balancer, key: Option<&[u8]>, loads: &[u64], up: &[bool]) -> Vec<usize> {
        let mut out = vec![99];
        b.order(key, |i| loads[i], |i| up[i], &mut out);
        out
    }

    fn first(b: &Balancer, key: Option<&[u8]>, loads: &[u64], up: &[bool]) -> usize {
        order(b, key, loads, up)[0]
    }

    fn assert_permutation(out: &[usize], n: usize) {
        let mut sorted = out.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{out:?}");
    }

    fn key(i: usize) -> Vec<u8> {
        format!("user-{i}").into_bytes()
    }

    #[test]
    fn round_robin_keeps_exact_proportions_interleaved() {
        let b = balancer(Policy::RoundRobin, &[3, 1]);
        let picks: Vec<usize> = (0..4000)
            .map(|_| first(&b, None, &[0, 0], &[true; 2]))
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 1000);
        for window in picks.windows(4) {
            assert_eq!(window.iter().filter(|&&p| p == 1).count(), 1, "{window:?}");
        }
    }

    #[test]
    fn round_robin_spreads_turns_like_nginx() {
        let b = balancer(Policy::RoundRobin, &[5, 1, 1]);
        let picks: Vec<usize> = (0..14)
            .map(|_| first(&b, None, &[0; 3], &[true; 3]))
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_fallbacks_rotate_from_the_choice() {
        let b = balancer(Policy::RoundRobin, &[1, 1, 1]);
        let up = [true; 3];
        assert_eq!(order(&b, None, &[0; 3], &up), [0, 1, 2]);
        assert_eq!(order(&b, None, &[0; 3], &up), [1, 2, 0]);
        assert_eq!(order(&b, None, &[0; 3], &up), [2, 0, 1]);
        assert_eq!(order(&b, None, &[0; 3], &up), [0, 1, 2]);
    }

    #[test]
    fn round_robin_shares_a_down_servers_turns_by_weight() {
        // Schedule a b c a: a's two turns go one each to b and c, not both to b.
        let b = balancer(Policy::RoundRobin, &[2, 1, 1]);
        let up = [false, true, true];
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[first(&b, None, &[0; 3], &up)] += 1;
        }
        assert_eq!(counts, [0, 200, 200]);
    }

    #[test]
    fn huge_weights_are_scaled_into_a_capped_schedule() {
        let b = balancer(Policy::RoundRobin, &[u32::MAX, 1]);
        assert!(b.schedule.len() as u64 <= SCHEDULE_CAP + 2);
        assert!(b.schedule.contains(&1), "every server keeps a turn");
        // Common factors are divided out: equal weights are a one-turn-each schedule.
        assert_eq!(
            balancer(Policy::RoundRobin, &[u32::MAX; 3]).schedule.len(),
            3
        );
        assert_eq!(
            *balancer(Policy::RoundRobin, &[600, 200]).schedule,
            [0, 0, 1, 0]
        );
    }

    #[test]
    fn zero_weights_count_as_one() {
        let b = balancer(Policy::RoundRobin, &[0, 0]);
        let picks: Vec<usize> = (0..4)
            .map(|_| first(&b, None, &[0; 2], &[true; 2]))
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn no_servers_gives_an_empty_order() {
        let none: [(&str, u32); 0] = [];
        for policy in POLICIES {
            let b = Balancer::new(policy, &none);
            let mut out = vec![1, 2];
            b.order(Some(b"k"), |_| 0, |_| true, &mut out);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn every_policy_lists_every_server_once() {
        fastrand::seed(1);
        for policy in POLICIES {
            for n in 1..=7 {
                let weights: Vec<u32> = (0..n).map(|i| i as u32 % 3).collect();
                let b = balancer(policy, &weights);
                for round in 0..50 {
                    let loads: Vec<u64> = (0..n).map(|_| fastrand::u64(0..4)).collect();
                    let up: Vec<bool> = (0..n).map(|i| (i + round) % 3 != 0).collect();
                    let k = key(round);
                    let key = (round % 2 == 0).then_some(&k[..]);
                    assert_permutation(&order(&b, key, &loads, &up), n);
                }
            }
        }
    }

    #[test]
    fn down_servers_go_last_and_first_only_when_all_are_down() {
        fastrand::seed(2);
        let up = [false, true, false, true];
        for policy in POLICIES {
            let b = balancer(policy, &[4, 1, 4, 1]);
            for i in 0..200 {
                let k = key(i);
                let out = order(&b, Some(&k), &[0, 9, 0, 9], &up);
                let mut healthy = out[..2].to_vec();
                healthy.sort_unstable();
                assert_eq!(healthy, [1, 3], "{policy:?}: {out:?}");
            }
            let out = order(&b, Some(b"k"), &[0; 4], &[false; 4]);
            assert_permutation(&out, 4);
        }
    }

    #[test]
    fn least_connections_picks_the_least_loaded_then_ascending() {
        let b = balancer(Policy::LeastConnections, &[1, 1, 1]);
        assert_eq!(order(&b, None, &[5, 2, 7], &[true; 3]), [1, 0, 2]);
        assert_eq!(order(&b, None, &[5, 2, 7], &[true, false, true]), [0, 2, 1]);
    }

    #[test]
    fn least_connections_divides_load_by_weight() {
        let b = balancer(Policy::LeastConnections, &[3, 1]);
        // 5/3 < 2/1
        assert_eq!(first(&b, None, &[5, 2], &[true; 2]), 0);
        // 7/3 > 2/1
        assert_eq!(first(&b, None, &[7, 2], &[true; 2]), 1);
        // Extreme values compare exactly, without overflow.
        let b = balancer(Policy::LeastConnections, &[u32::MAX, 1]);
        assert_eq!(first(&b, None, &[u64::MAX, u64::MAX / 2], &[true; 2]), 0);
    }

    #[test]
    fn least_connections_takes_turns_among_equals() {
        let b = balancer(Policy::LeastConnections, &[1, 1, 1, 1]);
        let mut counts = [0; 4];
        for _ in 0..400 {
            // Server 3 is busier; the other three tie.
            counts[first(&b, None, &[2, 2, 2, 3], &[true; 4])] += 1;
        }
        assert_eq!(counts[3], 0);
        assert!(
            counts[..3].iter().all(|&c| (130..=137).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn random_two_follows_weights_when_loads_are_equal() {
        fastrand::seed(3);
        let b = balancer(Policy::RandomTwo, &[1, 3, 4]);
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[first(&b, None, &[0; 3], &[true; 3])] += 1;
        }
        for (count, expected) in counts.iter().zip([2_500, 7_500, 10_000]) {
            assert!(count.abs_diff(expected) < 600, "{counts:?}");
        }
    }

    #[test]
    fn random_two_prefers_the_less_loaded() {
        fastrand::seed(4);
        let b = balancer(Policy::RandomTwo, &[1, 1]);
        for _ in 0..100 {
            // Both are always drawn, so the idle one always wins, the other follows.
            assert_eq!(order(&b, None, &[10, 0], &[true; 2]), [1, 0]);
        }
        let b = balancer(Policy::RandomTwo, &[1; 8]);
        let mut loads = [1; 8];
        loads[5] = 100;
        for _ in 0..1000 {
            // The busy server loses to whichever other server is drawn with it.
            assert_ne!(first(&b, None, &loads, &[true; 8]), 5);
        }
    }

    #[test]
    fn random_two_with_one_healthy_server_picks_it() {
        let b = balancer(Policy::RandomTwo, &[1, 1, 1]);
        for _ in 0..50 {
            assert_eq!(first(&b, None, &[0, 0, 9], &[false, false, true]), 2);
        }
    }

    #[test]
    fn hash_maps_a_key_to_the_same_server_in_every_replica() {
        let a = balancer(Policy::Hash, &[1; 5]);
        let b = balancer(Policy::Hash, &[1; 5]);
        for i in 0..500 {
            let k = key(i);
            let mine = order(&a, Some(&k), &[i as u64; 5], &[true; 5]);
            assert_eq!(
                mine,
                order(&a, Some(&k), &[0; 5], &[true; 5]),
                "loads play no part"
            );
            assert_eq!(mine, order(&b, Some(&k), &[0; 5], &[true; 5]));
        }
        // Pinned, so that a change of hashing (which would reshuffle every deployment's
        // sessions on upgrade) cannot go unnoticed.
        assert_eq!(
            order(&a, Some(b"alice"), &[0; 5], &[true; 5]),
            [0, 1, 4, 3, 2]
        );
    }

    #[test]
    fn hash_spreads_keys_evenly() {
        let b = balancer(Policy::Hash, &[1; 4]);
        let mut counts = [0u32; 4];
        for i in 0..10_000 {
            counts[first(&b, Some(&key(i)), &[0; 4], &[true; 4])] += 1;
        }
        assert!(
            counts.iter().all(|c| (1_875..=3_125).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn hash_follows_weights() {
        let b = balancer(Policy::Hash, &[1, 3]);
        let heavy = (0..10_000)
            .filter(|&i| first(&b, Some(&key(i)), &[0; 2], &[true; 2]) == 1)
            .count();
        assert!((7_200..=7_800).contains(&heavy), "{heavy}");
    }

    #[test]
    fn hash_adding_a_server_moves_keys_only_to_it() {
        for weights in [[1u32; 5], [2, 1, 1, 3, 1]] {
            let before = balancer(Policy::Hash, &weights[..4]);
            let after = balancer(Policy::Hash, &weights);
            let mut moved = 0;
            for i in 0..10_000 {
                let k = key(i);
                let old = first(&before, Some(&k), &[0; 4], &[true; 4]);
                let new = first(&after, Some(&k), &[0; 5], &[true; 5]);
                if old != new {
                    assert_eq!(new, 4, "a moved key goes to the new server");
                    moved += 1;
                }
            }
            assert!((1_000..=3_000).contains(&moved), "{weights:?}: {moved}");
        }
    }

    #[test]
    fn hash_removing_a_server_moves_only_its_keys() {
        let all = identities(&[1; 5]);
        let mut fewer = all.clone();
        let gone = fewer.remove(2);
        let before = Balancer::new(Policy::Hash, &all);
        let after = Balancer::new(Policy::Hash, &fewer);
        for i in 0..5_000 {
            let k = key(i);
            let old = &all[first(&before, Some(&k), &[0; 5], &[true; 5])];
            let new = &fewer[first(&after, Some(&k), &[0; 4], &[true; 4])];
            if old != &gone {
                assert_eq!(old, new);
            }
        }
    }

    #[test]
    fn hash_sends_a_down_servers_keys_to_their_second_choice() {
        let b = balancer(Policy::Hash, &[1; 4]);
        for i in 0..1_000 {
            let k = key(i);
            let all_up = order(&b, Some(&k), &[0; 4], &[true; 4]);
            let mut up = [true; 4];
            up[all_up[0]] = false;
            let one_down = order(&b, Some(&k), &[0; 4], &up);
            assert_eq!(one_down[..3], all_up[1..]);
            assert_eq!(one_down[3], all_up[0]);
        }
    }

    #[test]
    fn hash_without_a_key_round_robins() {
        let b = balancer(Policy::Hash, &[1, 1, 1]);
        let picks: Vec<usize> = (0..6)
            .map(|_| first(&b, None, &[0; 3], &[true; 3]))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_callback_that_orders_again_does_not_panic() {
        let b = balancer(Policy::LeastConnections, &[1, 1, 1]);
        let mut out = Vec::new();
        b.order(
            None,
            |i| {
                let mut inner = Vec::new();
                b.order(None, |_| 0, |_| true, &mut inner);
                inner[i] as u64
            },
            |_| true,
            &mut out,
        );
        assert_permutation(&out, 3);
    }
}
