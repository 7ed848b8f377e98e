//! The gateway: everything one configuration runs, started together and drained
//! together.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::{Builtin, Servers, Settings};
use crate::conn::ListenerCtx;
use crate::metrics::Metrics;
use crate::proxy::{AccessLog, Proxy, State};
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
    #[error("{source}")]
    Tls { source: crate::tls::TlsError },
    #[error("cannot start the built-in {what} upstream: {source}")]
    Builtin {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What a reload could not apply; everything else was applied.
#[derive(Debug, thiserror::Error)]
#[error("{}", failures.join("; "))]
pub struct ReloadError {
    pub failures: Vec<String>,
}

/// A running gateway.
pub struct Gateway {
    settings: Settings,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    listeners: Vec<(Arc<ListenerCtx>, SocketAddr)>,
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

        // Build and bind everything before serving anything: a configuration either
        // starts whole or not at all.
        let mut bound = Vec::new();
        for l in &settings.listeners {
            let ctx = ListenerCtx::new(
                l,
                metrics.listener(&l.name),
                &settings.timeouts,
                &settings.limits,
            )
            .map_err(|source| StartError::Tls { source })?;
            let listener = server::bind(l.listen).map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            bound.push((Arc::new(ctx), listener, l.listen));
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
        for (ctx, listener, configured) in bound {
            let addr = listener.local_addr().unwrap_or(configured);
            listeners.push((ctx.clone(), addr));
            tracing::info!(listener = %ctx.name, %addr, tls = ctx.tls.is_some(), "listening");
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
            .find(|(l, _)| &*l.name == name)
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

    /// Applies a newly loaded configuration. For now that is the certificates of TLS
    /// listeners (matched by name): new handshakes use the new ones, open connections
    /// keep theirs. A listener whose files fail to load keeps its certificates.
    pub fn reload(&self, settings: &Settings) -> Result<(), ReloadError> {
        let mut failures = Vec::new();
        for l in &settings.listeners {
            let (Some(new), Some((ctx, _))) = (
                &l.tls,
                self.listeners.iter().find(|(c, _)| *c.name == *l.name),
            ) else {
                continue;
            };
            let Some(tls) = &ctx.tls else { continue };
            match tls.reload(new) {
                Ok(()) => tracing::info!(listener = %l.name, "certificates reloaded"),
                Err(e) => failures.push(format!("listener \"{}\": {e}", l.name)),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ReloadError { failures })
        }
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
        let upstream = Upstream::new(
            u.name.clone(),
            &servers,
            u.keepalive,
            settings.timeouts,
            u.tls.as_ref(),
            metrics.upstream(&u.name),
        )
        .map_err(|source| StartError::Tls { source })?;
        upstreams.push(Arc::new(upstream));
    }
    let mut routes = RouteTable::default();
    for r in &settings.routes {
        routes.add(
            r.host.as_deref(),
            Route {
                name: r.name.as_str().into(),
                path: r.path.clone(),
                upstream: upstreams[r.upstream].clone(),
                metrics: Arc::new(metrics.route(&r.name)),
            },
        );
    }
    Ok(State {
        routes,
        timeouts: settings.timeouts,
        access: AccessLog {
            enabled: settings.log.access,
            query: settings.log.access_query,
        },
    })
}
