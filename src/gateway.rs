//! The gateway: everything one configuration runs, started together, reloaded in one
//! swap, and drained together.
//!
//! A reload builds the new state on the side (upstreams, routes, listener contexts
//! with their certificates, new sockets) and swaps only when all of it succeeded; any
//! failure leaves the running configuration as it was. Servers the new configuration
//! keeps keep their state (pooled connections, load, health), so least-connections
//! stays right and nothing reconnects; servers it drops are retired, and their
//! tunnels close spread over the drain period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Builtin, ConfigError, ListenerSettings, ServerAddr, Servers, Settings};
use crate::conn::ListenerCtx;
use crate::limits::{ClientLimits, ConnLimit};
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::proxy::{AccessLog, Proxy, State};
use crate::route::{Route, RouteTable};
use crate::server::{self, Listener};
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;
use crate::upstream::{Server, Upstream};
use crate::{admin, echo};

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
    #[error("allowed_origins: {0}")]
    Origins(String),
}

/// Why a reload did not take; the running configuration stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{}", .0.one_line())]
    Config(ConfigError),
    #[error("{0}")]
    Apply(StartError),
}

/// How often per-client handshake buckets that are full again are forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A running gateway.
pub struct Gateway {
    settings: Mutex<Settings>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    proxy: Arc<Proxy>,
    limits: Arc<ClientLimits>,
    listeners: Mutex<Vec<RunningListener>>,
    /// Built-in upstreams by upstream name, kept across reloads.
    builtins: Mutex<HashMap<String, SocketAddr>>,
    admin: Option<SocketAddr>,
    /// What the admin listener's status page shows.
    status: Arc<StatusBoard>,
}

struct RunningListener {
    settings: ListenerSettings,
    addr: SocketAddr,
    /// The accept loop's socket, so a reload can change its TCP options (which
    /// accepted connections inherit). Weak: when the loop ends (drain, removal) the
    /// socket must close, so the kernel refuses new connections.
    socket: std::sync::Weak<tokio::net::TcpListener>,
    ctx: Arc<ArcSwap<ListenerCtx>>,
    limit: Option<Arc<ConnLimit>>,
    stop: CancellationToken,
}

/// A listener socket bound for a configuration not yet installed.
struct Pending {
    settings: ListenerSettings,
    ctx: Arc<ListenerCtx>,
    limit: Option<Arc<ConnLimit>>,
    /// A fresh socket, or `None` to keep the running listener's.
    socket: Option<Arc<tokio::net::TcpListener>>,
}

impl Gateway {
    /// Binds every listener and starts serving. Must run inside a Tokio runtime.
    pub async fn start(settings: Settings) -> Result<Gateway, StartError> {
        let shutdown = Shutdown::new();
        let metrics = Arc::new(Metrics::new());
        let limits = Arc::new(ClientLimits::new(&settings.limits));
        let builtins = Mutex::new(HashMap::new());
        let state = build_state(&settings, None, &metrics, &shutdown, &builtins).await?;
        let proxy = Arc::new(Proxy::new(state, shutdown.clone(), limits.clone()));
        let admin_listener = match settings.admin {
            Some(addr) => Some(
                server::bind(addr, false).map_err(|source| StartError::Bind {
                    name: "admin".to_owned(),
                    addr,
                    source,
                })?,
            ),
            None => None,
        };
        let gateway = Gateway {
            admin: admin_listener.as_ref().and_then(|l| l.local_addr().ok()),
            status: Arc::new(StatusBoard::new(&settings)),
            settings: Mutex::new(settings.clone()),
            shutdown,
            metrics,
            proxy,
            limits,
            listeners: Mutex::new(Vec::new()),
            builtins,
        };
        let pending = gateway.prepare_listeners(&settings)?;
        gateway.install_listeners(pending);
        for up in gateway.proxy.state().routes.all().map(|r| &r.upstream) {
            up.start_maintenance();
        }
        gateway.show_status(&settings);
        if let Some(listener) = admin_listener {
            if let Some(addr) = gateway.admin {
                tracing::info!(%addr, "admin listening: / /status /metrics /healthz /readyz");
            }
            tokio::spawn(admin::serve(
                listener,
                gateway.metrics.clone(),
                gateway.shutdown.clone(),
                gateway.status.clone(),
            ));
        }
        gateway.spawn_sweeper();
        gateway.metrics.config_loaded(&settings.hash);
        Ok(gateway)
    }

    /// The address a listener is bound to (its port when the configuration said 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| l.settings.name == name)
            .map(|l| l.addr)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Loads the configuration file again and applies it; see [`Gateway::reload`].
    pub async fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        match config::load(path) {
            Ok(settings) => self.reload(settings).await,
            Err(e) => {
                self.metrics.reloaded(false);
                // One problem a line, as the loader reports them.
                let problems = e.to_string().lines().map(str::to_owned).collect();
                self.status.reloaded(false, problems);
                Err(ReloadError::Config(e))
            }
        }
    }

    /// Applies a new configuration in one swap, or not at all. Requests and tunnels
    /// already running keep what they started with; only tunnels to servers the new
    /// configuration drops are closed, spread over the drain period.
    pub async fn reload(&self, settings: Settings) -> Result<(), ReloadError> {
        let result = self.apply(&settings).await;
        self.metrics.reloaded(result.is_ok());
        let errors = result.as_ref().err().map(|e| vec![e.to_string()]);
        self.status
            .reloaded(result.is_ok(), errors.unwrap_or_default());
        result.map_err(ReloadError::Apply)
    }

    async fn apply(&self, settings: &Settings) -> Result<(), StartError> {
        let old = self.proxy.state();
        let state = build_state(
            settings,
            Some(&old),
            &self.metrics,
            &self.shutdown,
            &self.builtins,
        )
        .await?;
        let pending = self.prepare_listeners(settings)?;

        // ---- nothing above changed what runs; from here on, everything does ----
        let new_upstreams: Vec<Arc<Upstream>> = distinct_upstreams(&state.routes);
        self.proxy.replace(state);
        self.limits.apply(&settings.limits);
        self.install_listeners(pending);
        for up in distinct_upstreams(&old.routes) {
            up.stop_maintenance();
        }
        for up in &new_upstreams {
            up.start_maintenance();
        }
        self.retire_dropped_servers(&old, &new_upstreams);

        let mut current = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if current.admin != settings.admin {
            tracing::warn!(
                "the admin listener's address changed; it takes effect at the next restart"
            );
        }
        if current.workers != settings.workers {
            tracing::warn!("runtime.workers changed; it takes effect at the next restart");
        }
        *current = settings.clone();
        drop(current);
        self.metrics.config_loaded(&settings.hash);
        self.show_status(settings);
        Ok(())
    }

    /// Tells the status page the shape now running.
    fn show_status(&self, settings: &Settings) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|l| (l.settings.clone(), l.addr))
            .collect();
        let upstreams = distinct_upstreams(&self.proxy.state().routes);
        self.status.install(settings, listeners, upstreams);
    }

    /// Builds every listener's context and binds the sockets that are new: a listener
    /// keeps its socket when its name, address and `reuse_port` are unchanged.
    fn prepare_listeners(&self, settings: &Settings) -> Result<Vec<Pending>, StartError> {
        let running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = Vec::new();
        for l in &settings.listeners {
            let old = running.iter().find(|r| r.settings.name == l.name);
            let limit = l
                .max_connections
                .map(|max| match old.and_then(|o| o.limit.clone()) {
                    Some(existing) => {
                        existing.set_max(max);
                        existing
                    }
                    None => ConnLimit::new(max),
                });
            let ctx = ListenerCtx::new(
                l,
                self.metrics.listener(&l.name),
                &settings.timeouts,
                &settings.limits,
                &settings.http2,
                settings.tcp,
                limit.clone(),
            )
            .map_err(|source| StartError::Tls { source })?;
            let keep = old.is_some_and(|o| {
                o.settings.listen == l.listen && o.settings.reuse_port == l.reuse_port
            });
            let socket = if keep {
                None
            } else {
                Some(
                    server::bind_with(l.listen, l.reuse_port, &settings.tcp).map_err(|source| {
                        StartError::Bind {
                            name: l.name.clone(),
                            addr: l.listen,
                            source,
                        }
                    })?,
                )
            };
            pending.push(Pending {
                settings: l.clone(),
                ctx: Arc::new(ctx),
                limit,
                socket,
            });
        }
        Ok(pending)
    }

    /// Swaps in prepared listeners: new contexts for kept sockets, accept loops for
    /// new sockets, and stops listeners that were removed or moved. Connections
    /// already accepted are not touched.
    fn install_listeners(&self, pending: Vec<Pending>) {
        let mut running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::with_capacity(pending.len());
        for p in pending {
            let old = running
                .iter()
                .position(|r| r.settings.name == p.settings.name)
                .map(|i| running.swap_remove(i));
            match (p.socket, old) {
                (None, Some(mut old)) => {
                    if let Some(socket) = old.socket.upgrade()
                        && let Err(e) = crate::net::set_tcp_options(&*socket, &p.ctx.tcp)
                    {
                        tracing::warn!(listener = %p.settings.name, error = %e, "cannot change TCP options");
                    }
                    old.ctx.store(p.ctx);
                    old.settings = p.settings;
                    old.limit = p.limit;
                    next.push(old);
                }
                (socket, old) => {
                    if let Some(old) = old {
                        old.stop.cancel();
                    }
                    let Some(socket) = socket else { continue };
                    let addr = socket.local_addr().unwrap_or(p.settings.listen);
                    tracing::info!(listener = %p.settings.name, %addr, tls = p.ctx.tls.is_some(), "listening");
                    let ctx = Arc::new(ArcSwap::new(p.ctx));
                    let stop = CancellationToken::new();
                    let listener = Listener {
                        ctx: ctx.clone(),
                        proxy: self.proxy.clone(),
                        limits: self.limits.clone(),
                        shutdown: self.shutdown.clone(),
                        stop: stop.clone(),
                    };
                    let weak = Arc::downgrade(&socket);
                    tokio::spawn(listener.accept_loop(socket));
                    next.push(RunningListener {
                        settings: p.settings,
                        addr,
                        socket: weak,
                        ctx,
                        limit: p.limit,
                        stop,
                    });
                }
            }
        }
        for removed in running.drain(..) {
            tracing::info!(listener = %removed.settings.name, addr = %removed.addr, "listener removed");
            removed.stop.cancel();
        }
        *running = next;
    }

    /// Retires the servers of `old` that the new configuration no longer has at all:
    /// their tunnels drain. A server that only moved to another upstream keeps its
    /// tunnels: they did not have to be cut.
    fn retire_dropped_servers(&self, old: &State, new: &[Arc<Upstream>]) {
        let kept: Vec<&Arc<Server>> = new.iter().flat_map(|u| u.servers()).collect();
        for up in distinct_upstreams(&old.routes) {
            for s in up.servers() {
                if kept.iter().any(|k| Arc::ptr_eq(k, s)) {
                    continue;
                }
                // Not in this upstream any more: its gauge goes.
                self.metrics.forget_server(&up.name, &s.name);
                if kept.iter().any(|k| k.name == s.name) {
                    continue;
                }
                tracing::info!(upstream = %up.name, server = %s.name, "server removed: its tunnels drain");
                s.retire();
            }
        }
    }

    fn spawn_sweeper(&self) {
        let limits = self.limits.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => limits.sweep(),
                    () = shutdown.stopped() => return,
                }
            }
        });
    }

    /// Drains for the configured period, then stops; returns how many connections
    /// and tunnels had to be cut when the period ran out.
    pub async fn shutdown(&self) -> usize {
        let drain = self
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .timeouts
            .drain;
        self.shutdown.drain(drain).await
    }

    /// Stops at once, cutting every connection.
    pub fn stop_now(&self) {
        self.shutdown.stop_now();
    }
}

/// Each upstream once, from the routes that use it.
fn distinct_upstreams(routes: &RouteTable) -> Vec<Arc<Upstream>> {
    let mut out: Vec<Arc<Upstream>> = Vec::new();
    for r in routes.all() {
        if !out.iter().any(|u| Arc::ptr_eq(u, &r.upstream)) {
            out.push(r.upstream.clone());
        }
    }
    out
}

/// Builds the routing state a configuration describes. Servers that `old` already
/// has (same upstream, same server) are carried over with their state; built-in
/// upstreams are started once and kept.
async fn build_state(
    settings: &Settings,
    old: Option<&State>,
    metrics: &Metrics,
    shutdown: &Shutdown,
    builtins: &Mutex<HashMap<String, SocketAddr>>,
) -> Result<State, StartError> {
    let old_upstreams = old
        .map(|o| distinct_upstreams(&o.routes))
        .unwrap_or_default();
    // One ending token per server name, whichever upstreams list it: a server that
    // moves to another upstream is a new `Server` there, and the tunnels opened
    // before the move must still end when that server is removed.
    let mut endings: HashMap<Arc<str>, CancellationToken> = old_upstreams
        .iter()
        .flat_map(|u| u.servers())
        .map(|s| (s.name.clone(), s.ending()))
        .collect();
    let mut upstreams = Vec::with_capacity(settings.upstreams.len());
    for u in &settings.upstreams {
        let specs = match &u.servers {
            Servers::Addresses(list) => list.clone(),
            Servers::Builtin(Builtin::Echo) => {
                let known = builtins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&u.name)
                    .copied();
                let addr = match known {
                    Some(addr) => addr,
                    None => {
                        let addr = echo::start(shutdown.clone()).await.map_err(|source| {
                            StartError::Builtin {
                                what: "echo",
                                source,
                            }
                        })?;
                        builtins
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(u.name.clone(), addr);
                        addr
                    }
                };
                vec![ServerAddr {
                    name: format!("builtin:echo@{addr}"),
                    addrs: vec![addr],
                    resolve: false,
                    weight: 1,
                }]
            }
        };
        let previous = old_upstreams.iter().find(|o| *o.name == *u.name);
        let servers = specs
            .iter()
            .map(|spec| {
                let kept =
                    previous.and_then(|p| p.servers().iter().find(|s| *s.name == *spec.name));
                match kept {
                    Some(s) => {
                        s.update(spec, u.keepalive);
                        s.clone()
                    }
                    None => {
                        let ending = endings
                            .entry(spec.name.as_str().into())
                            .or_insert_with(|| shutdown.drain_token().child_token())
                            .clone();
                        Arc::new(Server::new(
                            spec,
                            u.keepalive,
                            metrics.server_up(&u.name, &spec.name),
                            ending,
                        ))
                    }
                }
            })
            .collect();
        let upstream = Upstream::new(
            u,
            servers,
            settings.timeouts,
            settings.tcp,
            metrics.upstream(&u.name),
        )
        .map_err(|source| StartError::Tls { source })?;
        if let Some(p) = previous
            && p.tls_settings() != upstream.tls_settings()
        {
            // Pooled connections were made with the old TLS settings.
            for s in upstream.servers() {
                s.clear_pool();
            }
        }
        upstreams.push(Arc::new(upstream));
    }
    let mut routes = RouteTable::default();
    for r in &settings.routes {
        let origins = if r.allowed_origins.is_empty() {
            None
        } else {
            Some(OriginPolicy::new(&r.allowed_origins).map_err(StartError::Origins)?)
        };
        routes.add(
            r.host.as_deref(),
            Route {
                name: r.name.as_str().into(),
                path: r.path.clone(),
                subprotocol: r.subprotocol.clone(),
                origins,
                upstream: upstreams[r.upstream].clone(),
                metrics: Arc::new(metrics.route(&r.name)),
                websocket: r.websocket,
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
        max_tunnel_lifetime: settings.limits.max_tunnel_lifetime,
        max_head: settings.limits.max_request_header_bytes,
    })
}
