//! The gateway: everything one configuration runs, started together and drained
//! together.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::{Builtin, Servers, Settings};
use crate::conn::ListenerCtx;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, State};
use crate::route::{Route, RouteTable};
use crate::shutdown::Shutdown;
use crate::upstream::Upstream;
use crate::{admin, echo, server};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (listener \"{name}\"): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the built-in {what} upstream: {source}")]
    Builtin {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Gateway {
    settings: Settings,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
}

impl Gateway {
    /// Binds every listener and starts serving. Must run inside a Tokio runtime.
    pub async fn start(settings: Settings) -> Result<Gateway, StartError> {
        let shutdown = Shutdown::new();
        let metrics = Arc::new(Metrics::new());
        let state = build_state(&settings, &metrics, &shutdown).await?;
        let proxy = Arc::new(Proxy::new(state, shutdown.clone()));
        let limit = Arc::new(Semaphore::new(settings.limits.max_connections));

        // Bind everything before serving anything: a configuration either starts
        // whole or not at all.
        let mut bound = Vec::new();
        for l in &settings.listeners {
            let listener = server::bind(l.listen).map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            bound.push((l, listener));
        }
        let admin_listener = match settings.admin {
            Some(addr) => Some(server::bind(addr).map_err(|source| StartError::Bind {
                name: "admin".to_owned(),
                addr,
                source,
            })?),
            None => None,
        };

        let mut listeners = Vec::new();
        for (l, listener) in bound {
            let addr = listener.local_addr().unwrap_or(l.listen);
            listeners.push((l.name.clone(), addr));
            let ctx = Arc::new(ListenerCtx::new(
                l.name.clone(),
                metrics.listener(&l.name),
                &settings.timeouts,
                &settings.limits,
            ));
            tracing::info!(listener = %l.name, %addr, "listening");
            tokio::spawn(server::accept_loop(
                listener,
                ctx,
                proxy.clone(),
                shutdown.clone(),
                limit.clone(),
            ));
        }
        let admin = match admin_listener {
            Some(listener) => {
                let addr = listener.local_addr().ok();
                if let Some(addr) = addr {
                    tracing::info!(%addr, "admin listening: /metrics /healthz /readyz");
                }
                tokio::spawn(admin::serve(listener, metrics.clone(), shutdown.clone()));
                addr
            }
            None => None,
        };
        Ok(Gateway {
            settings,
            shutdown,
            metrics,
            listeners,
            admin,
        })
    }

    /// The address a listener is bound to (its port when the configuration said 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Drains for the configured period, then stops; returns how many connections
    /// and tunnels had to be cut when the period ran out.
    pub async fn shutdown(&self) -> usize {
        self.shutdown.drain(self.settings.timeouts.drain).await
    }

    /// Stops at once, cutting every connection.
    pub fn stop_now(&self) {
        self.shutdown.stop_now();
    }
}

/// Builds the routing state a configuration describes, starting built-in upstreams.
async fn build_state(
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<State, StartError> {
    let mut upstreams = Vec::with_capacity(settings.upstreams.len());
    for u in &settings.upstreams {
        let servers = match &u.servers {
            Servers::Addresses(list) => list.clone(),
            Servers::Builtin(Builtin::Echo) => {
                let addr =
                    echo::start(shutdown.clone())
                        .await
                        .map_err(|source| StartError::Builtin {
                            what: "echo",
                            source,
                        })?;
                vec![crate::config::ServerAddr {
                    name: format!("builtin:echo@{addr}"),
                    addr,
                }]
            }
        };
        upstreams.push(Arc::new(Upstream::new(
            u.name.clone(),
            &servers,
            u.keepalive,
            settings.timeouts,
            metrics.upstream(&u.name),
        )));
    }
    let mut routes = RouteTable::default();
    for r in &settings.routes {
        routes.add(
            r.host.as_deref(),
            Route {
                name: r.name.clone(),
                path: r.path.clone(),
                upstream: upstreams[r.upstream].clone(),
                metrics: Arc::new(metrics.route(&r.name)),
            },
        );
    }
    Ok(State {
        routes,
        timeouts: settings.timeouts,
    })
}
