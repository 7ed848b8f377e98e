//! Limits that keep one client, or a flood of them, from taking the service down:
//! connections for the whole process and per listener, connections and handshake
//! rate per client. All of them can be changed by a reload without losing count.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::Limits;
use crate::ratelimit::{HandshakeRate, PerIpConnections, PerIpGuard};

/// A count of open things under a maximum that a reload may change.
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    max: AtomicUsize,
}

impl ConnLimit {
    pub fn new(max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// Counts one more, unless the limit is reached. Lowering the maximum below what
    /// is open closes nothing; it only refuses until enough have ended.
    pub fn try_acquire(self: &Arc<Self>) -> Option<LimitGuard> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before >= self.max.load(Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(LimitGuard(self.clone()))
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One counted connection; released on drop.
#[derive(Debug)]
pub struct LimitGuard(Arc<ConnLimit>);

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which limit refused a connection or request; the `limit` label of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    ListenerMaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::ListenerMaxConnections => "listener_max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// The process-wide client limits, shared by every listener and kept across reloads.
pub struct ClientLimits {
    pub global: Arc<ConnLimit>,
    per_ip: Arc<PerIpConnections>,
    per_ip_on: AtomicBool,
    handshakes: HandshakeRate,
    handshakes_on: AtomicBool,
}

/// What an accepted connection holds until it (or its tunnel) is gone.
#[derive(Default)]
pub struct Admission {
    _global: Option<LimitGuard>,
    _listener: Option<LimitGuard>,
    _per_ip: Option<PerIpGuard>,
}

impl ClientLimits {
    pub fn new(limits: &Limits) -> ClientLimits {
        let l = ClientLimits {
            global: ConnLimit::new(limits.max_connections),
            per_ip: Arc::new(PerIpConnections::new(
                limits.max_connections_per_ip.unwrap_or(usize::MAX),
            )),
            per_ip_on: AtomicBool::new(false),
            handshakes: HandshakeRate::new(1.0, 1.0),
            handshakes_on: AtomicBool::new(false),
        };
        l.apply(limits);
        l
    }

    /// Takes a reloaded configuration's limits; what is open stays counted.
    pub fn apply(&self, limits: &Limits) {
        self.global.set_max(limits.max_connections);
        self.per_ip
            .set_max(limits.max_connections_per_ip.unwrap_or(usize::MAX));
        self.per_ip_on
            .store(limits.max_connections_per_ip.is_some(), Ordering::Relaxed);
        if let Some(rate) = limits.handshakes_per_second_per_ip {
            self.handshakes
                .set_rate(rate, limits.handshake_burst_per_ip.max(1.0));
        }
        self.handshakes_on.store(
            limits.handshakes_per_second_per_ip.is_some(),
            Ordering::Relaxed,
        );
    }

    /// Admits a new connection from `client` under the global, listener and
    /// per-client limits, or names the limit that refuses it.
    pub fn admit(
        &self,
        client: IpAddr,
        listener: Option<&Arc<ConnLimit>>,
    ) -> Result<Admission, Refusal> {
        let mut admission = self.admit_shared(listener)?;
        self.admit_client(&mut admission, client)?;
        Ok(admission)
    }

    /// Admits a connection under the global and listener limits only, for a listener
    /// that learns the client's address later (from a PROXY header); the per-client
    /// limit follows with [`ClientLimits::admit_client`].
    pub fn admit_shared(&self, listener: Option<&Arc<ConnLimit>>) -> Result<Admission, Refusal> {
        let global = self.global.try_acquire().ok_or(Refusal::MaxConnections)?;
        let listener = match listener {
            Some(l) => Some(l.try_acquire().ok_or(Refusal::ListenerMaxConnections)?),
            None => None,
        };
        Ok(Admission {
            _global: Some(global),
            _listener: listener,
            _per_ip: None,
        })
    }

    /// Adds `client`'s own limit to an admission.
    pub fn admit_client(&self, admission: &mut Admission, client: IpAddr) -> Result<(), Refusal> {
        if self.per_ip_on.load(Ordering::Relaxed) {
            let guard = self
                .per_ip
                .try_acquire(client)
                .map_err(|_| Refusal::MaxConnectionsPerIp)?;
            admission._per_ip = Some(guard);
        }
        Ok(())
    }

    /// Whether `client` may make another WebSocket handshake now.
    pub fn allow_handshake(&self, client: IpAddr) -> bool {
        !self.handshakes_on.load(Ordering::Relaxed) || self.handshakes.allow(client, Instant::now())
    }

    /// Forgets clients whose handshake buckets are full again; run periodically.
    pub fn sweep(&self) {
        self.handshakes.sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_limit_counts_and_can_be_resized() {
        let l = ConnLimit::new(2);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        l.set_max(3);
        let c = l.try_acquire().unwrap();
        l.set_max(1);
        drop(a);
        assert!(l.try_acquire().is_none(), "still over the lowered maximum");
        drop((b, c));
        assert!(l.try_acquire().is_some());
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn admission_names_the_refusing_limit() {
        let limits = Limits {
            max_connections: 10,
            max_connections_per_ip: Some(1),
            ..Limits::default()
        };
        let l = ClientLimits::new(&limits);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let listener = ConnLimit::new(5);
        let first = l.admit(ip, Some(&listener)).unwrap();
        assert_eq!(
            l.admit(ip, Some(&listener)).err(),
            Some(Refusal::MaxConnectionsPerIp)
        );
        assert!(
            l.admit("192.0.2.2".parse().unwrap(), Some(&listener))
                .is_ok()
        );
        drop(first);
        assert!(l.admit(ip, Some(&listener)).is_ok());
        // A refused admission leaves nothing counted.
        assert_eq!(l.global.open(), 0);
        assert_eq!(listener.open(), 0);
    }
}
