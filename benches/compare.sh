#!/usr/bin/env bash
# Side-by-side benchmark: sluice against nginx, HAProxy and Caddy (and the backend
# reached directly, the ceiling, and through the floor, a bare TCP relay), every
# scenario against every target in one run.
#
#   benches/compare.sh            full run (about 15 minutes once built)
#   benches/compare.sh --quick    shorter run, fewer idle tunnels (under 3 minutes)
#
# Options: --targets "direct floor sluice nginx haproxy caddy" (a subset, in order;
#          also sluice-opaque, sluice with WebSocket frame tracking off, and
#          sluice-uring, the same with its io_uring tunnel transfer on),
#          --scenarios "idle ws64-w8 ws64-w128 ws64k-w4 pingpong handshakes http
#          wss-handshakes wss64-w8 wss64k-w4 https h2 grpc" (a subset; table order
#          stays), --rounds N (rounds of the rate scenarios; 3 in a full run, 1
#          quick), --keep (keep the work directory with configs and logs), --help.
#
# It installs what is missing (nginx, haproxy, caddy, h2load and openssl from the
# distribution; the sluice binary and the three bench programs with cargo), writes
# each proxy's config into a temporary directory, starts it on loopback ports picked
# at run time, pins it to CPU 0 with the load generator and the echo backend on
# CPU 1, runs the scenarios, and prints one markdown table. Every process it starts
# is stopped on exit, Ctrl-C included.
#
# The TLS scenarios (wss-*, https: loadgen over rustls; h2: HTTP/2 GETs made by
# h2load) run against a second start of each proxy, with a TLS listener and the
# same certificate for all, so the other scenarios run against exactly the
# configuration they always had. The grpc scenario (gRPC unary calls, also made by
# h2load) runs against a third start, the same TLS listener in front of the echo
# backend's h2c gRPC port. The direct and floor columns have no TLS rows: nothing
# there ends TLS.
#
# On a virtual machine the same figure moves by 10 to 20 % from one minute to the
# next, so a full run measures the rate scenarios in rounds: every target in turn,
# restarted each round, in a different order each round, and the table shows each
# cell's median over the rounds. Idle tunnels are measured once, in the first round.

set -uo pipefail

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
}

QUICK=0
KEEP=0
ROUNDS=""
TARGETS="direct floor sluice nginx haproxy caddy"
ALL_SCENARIOS="idle ws64-w8 ws64-w128 ws64k-w4 pingpong handshakes http wss-handshakes wss64-w8 wss64k-w4 https h2 grpc"
# The scenarios of each proxy's TLS start, in table order: loadgen's over rustls,
# then h2load's HTTP/2 row.
TLS_SCENARIOS="wss-handshakes wss64-w8 wss64k-w4 https h2"
SCENARIOS=$ALL_SCENARIOS
while (($#)); do
    case "$1" in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --rounds)
        shift
        ROUNDS="${1:-}"
        [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || {
            echo "compare.sh: --rounds needs a whole number from 1" >&2
            exit 2
        }
        ;;
    --targets)
        shift
        TARGETS="${1:-}"
        ;;
    --scenarios)
        shift
        SCENARIOS="${1:-}"
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "compare.sh: unknown argument: $1" >&2
        usage >&2
        exit 2
        ;;
    esac
    shift
done

[[ -n "${TARGETS// /}" ]] || {
    echo "compare.sh: --targets needs at least one target" >&2
    exit 2
}
for t in $TARGETS; do
    case "$t" in
    direct | floor | sluice | sluice-opaque | sluice-uring | nginx | haproxy | caddy) ;;
    *)
        echo "compare.sh: unknown target: $t (known: direct floor sluice sluice-opaque sluice-uring nginx haproxy caddy)" >&2
        exit 2
        ;;
    esac
done
[[ -n "${SCENARIOS// /}" ]] || {
    echo "compare.sh: --scenarios needs at least one scenario" >&2
    exit 2
}
for s in $SCENARIOS; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || {
        echo "compare.sh: unknown scenario: $s (known: $ALL_SCENARIOS)" >&2
        exit 2
    }
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
T0=$(date +%s)

# ---- Durations and sizes ----
# Idle tunnels: the proxy's memory is read SURGE_MS after the last tunnel opened,
# while what the surge of handshakes took may still be held, and again SETTLE_MS
# after it, settled. At once, not after a second: one second after the last of
# 2,000 or 10,000 opened, every proxy here had already settled (the same VmRSS at
# 1 s, 1.5 s and 12 s), while at once sluice still held three times its settled
# cost per tunnel (2026-12-08, quick run: 6.3 against 2.2 KiB).
SURGE_MS=0
if ((QUICK)); then
    WARMUP=0.5
    DURATION=1.5
    IDLE_WANTED=2000
    SETTLE_MS=500
    : "${ROUNDS:=1}"
else
    WARMUP=1
    DURATION=3
    IDLE_WANTED=10000
    SETTLE_MS=1000
    : "${ROUNDS:=3}"
fi
HTTP_BODY=128

# ---- Cleanup: every process started here is stopped, whatever happens ----
STARTED_PIDS=()
WORK=""
ADDED_POLICY=0

cleanup() {
    local pid i alive
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    # Up to 5 s for a clean exit, then no more waiting.
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "${STARTED_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${STARTED_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    if ((ADDED_POLICY)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if ((KEEP)); then
            echo "work directory kept: $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT TERM HUP

say() { printf '\n==> %s\n' "$*" >&2; }
die() {
    echo "compare.sh: $*" >&2
    exit 1
}

# Starts "$@" in the background with output to the log file $1's path; the process
# is remembered for cleanup and its pid left in LAST_PID.
LAST_PID=""
start_bg() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

# Stops one process started by start_bg, waiting up to 5 s before SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# Waits until something accepts on 127.0.0.1:$1 while process $2 lives.
wait_port() {
    local port=$1 pid=$2 i
    for ((i = 0; i < 200; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# The pids whose parent is $1 (from /proc, so no procps is needed).
children_of() {
    local parent=$1 f line fields
    for f in /proc/[0-9]*/stat; do
        # The process may be gone by now.
        { read -r line <"$f"; } 2>/dev/null || continue
        # After the command name (which may hold spaces): state, then the parent pid.
        read -r -a fields <<<"${line##*) }"
        if [[ "${fields[1]:-}" == "$parent" ]]; then
            f=${f#/proc/}
            echo "${f%/stat}"
        fi
    done
}

# ---- Open files: raise the soft limit to the hard one for everything started ----
HARD_NOFILE=$(ulimit -Hn)
if [[ "$HARD_NOFILE" == unlimited ]]; then
    HARD_NOFILE=1048576
fi
ulimit -n "$HARD_NOFILE" 2>/dev/null || die "cannot raise the open-file limit to $HARD_NOFILE"
NOFILE=$(ulimit -n)
# A proxy holding N tunnels needs 2N descriptors (client and upstream side) plus its
# listeners, logs and internals: keep 200 spare.
IDLE_MAX=$(((NOFILE - 200) / 2))
IDLE_N=$IDLE_WANTED
IDLE_CAPPED=0
if ((IDLE_N > IDLE_MAX)); then
    IDLE_N=$IDLE_MAX
    IDLE_CAPPED=1
fi

# ---- Install what is missing ----
have_nginx() { command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; }
have_haproxy() { command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]]; }
have_caddy() { command -v caddy >/dev/null 2>&1 || [[ -x /usr/bin/caddy ]]; }

wanted() { [[ " $TARGETS " == *" $1 "* ]]; }
scenario_wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# Whether target $1 can end TLS: the backend cannot (it speaks HTTP/1.1 and h2c
# without TLS), nor can the floor, which relays bytes.
ends_tls() { [[ "$1" != direct && "$1" != floor ]]; }
# The TLS scenarios (wss-*, https, h2 and grpc) are measured against the proxies only.
TLS_WANTED=0
H2LOAD_WANTED=0
TLS_RUNS=0
for s in $TLS_SCENARIOS grpc; do
    scenario_wanted "$s" && TLS_WANTED=1
done
if ((TLS_WANTED)); then
    for t in $TARGETS; do
        ends_tls "$t" && TLS_RUNS=1
    done
fi
if ((TLS_RUNS)) && { scenario_wanted h2 || scenario_wanted grpc; }; then
    H2LOAD_WANTED=1
fi
# The other scenarios, in table order, for the first start of each target.
PLAIN_SCENARIOS=""
for s in $SCENARIOS; do
    [[ " $TLS_SCENARIOS grpc " == *" $s "* ]] || PLAIN_SCENARIOS+="$s "
done

missing=()
for t in nginx haproxy caddy; do
    if wanted "$t" && ! "have_$t"; then
        missing+=("$t")
    fi
done
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if ((TLS_RUNS)); then
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
fi
if ((H2LOAD_WANTED)); then
    command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
    # The grpc scenario's one call through each proxy, to see its trailers.
    scenario_wanted grpc && ! command -v curl >/dev/null 2>&1 && missing+=(curl)
fi
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    (($(id -u) == 0)) || die "run as root to install ${missing[*]} (or install them first)"
    # The packages' scripts would start system-wide services on ports 80 and 443; a
    # policy-rc.d answering 101 ("not allowed") keeps them from starting.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        ADDED_POLICY=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
    if ((ADDED_POLICY)); then
        rm -f /usr/sbin/policy-rc.d
        ADDED_POLICY=0
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

say "building sluice and the bench programs (cargo build --release)"
command -v cargo >/dev/null 2>&1 || die "cargo is needed to build sluice"
# In the background and waited for, so that a signal stops the build at once.
cargo build --release --bin sluice --example loadgen --example echo_backend --example floor >&2 &
STARTED_PIDS+=("$!")
wait "$!" || die "the build failed"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SLUICE="$TARGET_DIR/release/sluice"
LOADGEN="$TARGET_DIR/release/examples/loadgen"
BACKEND="$TARGET_DIR/release/examples/echo_backend"
FLOOR="$TARGET_DIR/release/examples/floor"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX") || die "mktemp failed"
# nginx's worker runs as an unprivileged user and must reach its prefix.
chmod 755 "$WORK"
OUT_DIR="$TARGET_DIR/bench"
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS="$OUT_DIR/compare-$STAMP.jsonl"
TABLE="$OUT_DIR/compare-$STAMP.md"
: >"$RESULTS"

# ---- TLS for the TLS scenarios: one certificate for every proxy ----
# ECDSA P-256, for localhost and 127.0.0.1 (neither h2load nor loadgen sends SNI to
# an IP address, so a proxy that picks its certificate by name falls back on the
# address or on its only one). Made fresh each run; h2load checks nothing but the
# handshake, loadgen trusts exactly this certificate.
CERT=""
KEY=""
CERT_AND_KEY=""
H2LOAD=""
if ((TLS_RUNS)); then
    mkdir -p "$WORK/tls"
    CERT="$WORK/tls/cert.pem"
    KEY="$WORK/tls/key.pem"
    # HAProxy takes the certificate and its key in one file.
    CERT_AND_KEY="$WORK/tls/cert-and-key.pem"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$KEY" -out "$CERT" >"$WORK/tls/openssl.log" 2>&1 ||
        die "openssl could not make the certificate: $(cat "$WORK/tls/openssl.log")"
    cat "$CERT" "$KEY" >"$CERT_AND_KEY"
    # nginx's master reads them as root; the rest run as root here.
    chmod 600 "$KEY" "$CERT_AND_KEY"
fi
if ((H2LOAD_WANTED)); then
    H2LOAD=$(command -v h2load) || die "h2load is needed for the h2 and grpc scenarios (package nghttp2-client)"
fi
# What h2load and loadgen offer, so that every proxy negotiates the same: TLS 1.3
# with one cipher suite and one key-exchange group. AES-128-GCM is the one every
# TLS 1.3 stack must have and the one clients prefer on machines with AES
# instructions.
TLS_CIPHER=TLS_AES_128_GCM_SHA256
TLS_GROUP=X25519

# ---- CPU pinning and priority ----
# As root, everything runs at the highest priority so that other work on the machine
# (a build, say) takes less from the measurement; the loadgen reports what others
# still took from each core, and the table flags it.
NICE=()
if (($(id -u) == 0)); then
    NICE=(nice -n -20)
fi
NCPU=$(nproc 2>/dev/null || echo 1)
if ((NCPU >= 2)); then
    PROXY_PIN=("${NICE[@]}" taskset -c 0)
    CLIENT_PIN=("${NICE[@]}" taskset -c 1)
    PROBE_CORES=(--proxy-cpu 0 --client-cpu 1)
    PIN_NOTE="Proxy pinned to CPU 0, load generator and echo backend to CPU 1; every proxy runs one worker thread."
else
    echo "compare.sh: only $NCPU CPU: running unpinned, the proxy shares its core" >&2
    PROXY_PIN=("${NICE[@]}")
    CLIENT_PIN=("${NICE[@]}")
    PROBE_CORES=()
    PIN_NOTE="Only one CPU: nothing pinned, the proxy shared its core with the load generator and backend."
fi

# ---- Per-target configuration ----
# Each writes its config into $WORK/<target>/ ($WORK/<target>-tls/ when KIND is tls,
# -grpc when grpc) and starts the proxy listening on $PROXY_PORT in front of the
# backend on $BACKEND_PORT; sets PROXY_MAIN (the process started, stopped at the
# end) and PROXY_PID (the one whose CPU time and memory are measured: the same
# except for nginx). KIND plain is a plain listener, for every scenario but the TLS
# ones; KIND tls is a TLS listener offering h2 and http/1.1 in ALPN, with $CERT and
# $KEY, TLS 1.3 only, and otherwise the same settings, for the wss-*, https and h2
# scenarios; KIND grpc is the same TLS listener in front of the backend's h2c gRPC
# port, $GRPC_PORT, spoken to over HTTP/2. The floor starts for KIND plain only.
KIND=plain

work_dir() {
    if [[ "$KIND" == plain ]]; then echo "$WORK/$1"; else echo "$WORK/$1-$KIND"; fi
}

# Idle upstream connections each proxy keeps (where it has such a limit). The h2
# scenario has 500 requests in flight, so up to 500 upstream connections busy at
# once: with 128 kept, nginx, Caddy and sluice closed the rest after each response
# (7,000 to 10,000 connections in TIME_WAIT after 3 s) and the row measured
# connection set-up instead of HTTP/2. HAProxy keeps every idle connection anyway.
# The grpc scenario keeps as many: nginx's grpc_pass carries one call per upstream
# connection at a time; the others multiplex calls on a few HTTP/2 connections. The
# wss and https rows share the h2 row's start, so they have the same pool; they need
# at most 50 (https) upstream connections at once.
upstream_idle() {
    if [[ "$KIND" == plain ]]; then echo 128; else echo 1024; fi
}

# sluice-opaque is sluice with WebSocket frame tracking off (SLUICE_WS_FRAMES=0): bytes
# only, as before tunnels knew frames, to measure what the tracking costs.
start_sluice-opaque() {
    start_sluice sluice-opaque SLUICE_WS_FRAMES=0
}

# sluice-uring is sluice-opaque with the io_uring tunnel transfer on (issue #14): a
# reference column like sluice-opaque, to see whether the experiment pays.
start_sluice-uring() {
    start_sluice sluice-uring SLUICE_WS_FRAMES=0 SLUICE_IO_URING=1
}

# start_sluice [NAME [VAR=VALUE...]]: sluice with the environment given.
start_sluice() {
    local name=${1:-sluice}
    local envs=("${@:2}")
    ((${#envs[@]})) || envs=(SLUICE_WS_FRAMES=1)
    local d listener="listen = \"127.0.0.1:$PROXY_PORT\"" upstream="servers = [\"127.0.0.1:$BACKEND_PORT\"]"
    d=$(work_dir "$name")
    mkdir -p "$d"
    if [[ "$KIND" == grpc ]]; then
        # Prior knowledge (h2c): no tls on the upstream.
        upstream="servers = [\"127.0.0.1:$GRPC_PORT\"]"$'\n'"protocol = \"h2\""
    fi
    if [[ "$KIND" != plain ]]; then
        # A TLS listener offers h2 in ALPN, before http/1.1, unless http2 = false;
        # at most 128 streams per connection by default ([http2]).
        listener+=$'\n'"tls = { cert = \"$CERT\", key = \"$KEY\", min_version = \"1.3\" }"
    fi
    cat >"$d/sluice.toml" <<EOF
[runtime]
workers = 1

[timeouts]
idle = "600s"
drain = "2s"

[limits]
max_connections = 100000

# No access log, as for every other proxy here.
[log]
access = false

[[listeners]]
$listener

[[routes]]
path = "/"
upstream = "b"

[upstreams.b]
$upstream
keepalive = $(upstream_idle)
EOF
    start_bg "$d/sluice.log" "${PROXY_PIN[@]}" env "${envs[@]}" "$SLUICE" -c "$d/sluice.toml"
    PROXY_MAIN=$LAST_PID
    PROXY_PID=$LAST_PID
    wait_port "$PROXY_PORT" "$PROXY_PID"
}

start_nginx() {
    local d listen="listen 127.0.0.1:$PROXY_PORT backlog=4096;"
    local upstream_port=$BACKEND_PORT
    local pass="proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            # Pass responses on as they arrive, as a gateway for streams does; the
            # 16 KiB buffer also sizes each direction of an upgraded tunnel.
            proxy_buffering off;
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;"
    if [[ "$KIND" == grpc ]]; then
        # grpc_pass speaks HTTP/2 with prior knowledge (grpc://, no TLS), one stream
        # per upstream connection; the keepalive pool below keeps those connections.
        upstream_port=$GRPC_PORT
        pass="grpc_pass grpc://backend;
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;"
    fi
    d=$(work_dir nginx)
    mkdir -p "$d"
    if [[ "$KIND" != plain ]]; then
        # nginx 1.22's form (1.25 moved http2 to its own directive); 128 streams per
        # connection by default, and keepalive_requests caps HTTP/2 requests too.
        listen="listen 127.0.0.1:$PROXY_PORT ssl http2 backlog=4096;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.3;"
    fi
    cat >"$d/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $d/nginx.pid;
error_log $d/error.log warn;

# nginx runs out of connection slots before it runs out of descriptors (9,375
# tunnels with 20,000 slots and 20,000 descriptors): give it slots to spare, so that
# the open-file limit is what bounds it, as it bounds the other proxies.
events {
    worker_connections $((NOFILE * 2));
}

http {
    access_log off;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy_temp;
    fastcgi_temp_path $d/fastcgi_temp;
    uwsgi_temp_path $d/uwsgi_temp;
    scgi_temp_path $d/scgi_temp;
    # Keep-alive without a per-connection request cap, like the other proxies.
    keepalive_timeout 600s;
    keepalive_requests 1000000;

    # Upgrade requests get "Connection: upgrade"; others get no Connection header at
    # all, so that upstream keep-alive works for plain HTTP.
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      '';
    }

    upstream backend {
        server 127.0.0.1:$upstream_port;
        keepalive $(upstream_idle);
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }

    server {
        $listen
        location / {
            $pass
        }
    }
}
EOF
    start_bg "$d/stderr.log" "${PROXY_PIN[@]}" nginx -p "$d/" -e "$d/error.log" -c "$d/nginx.conf"
    PROXY_MAIN=$LAST_PID
    wait_port "$PROXY_PORT" "$PROXY_MAIN" || return 1
    # The worker does all the proxying; the master only supervises it.
    local i
    PROXY_PID=""
    for ((i = 0; i < 100; i++)); do
        PROXY_PID=$(children_of "$PROXY_MAIN" | head -n1)
        [[ -n "$PROXY_PID" ]] && break
        sleep 0.05
    done
    [[ -n "$PROXY_PID" ]]
}

start_haproxy() {
    local d bind="bind 127.0.0.1:$PROXY_PORT" server="server s1 127.0.0.1:$BACKEND_PORT"
    d=$(work_dir haproxy)
    mkdir -p "$d"
    if [[ "$KIND" != plain ]]; then
        bind+=" ssl crt $CERT_AND_KEY alpn h2,http/1.1 ssl-min-ver TLSv1.3"
    fi
    if [[ "$KIND" == grpc ]]; then
        # HTTP/2 with prior knowledge to the server, streams multiplexed on its
        # connections (http-reuse always).
        server="server s1 127.0.0.1:$GRPC_PORT proto h2"
    fi
    # HAProxy refuses to start when maxconn needs more descriptors than the hard
    # limit allows (two per proxied connection).
    local maxconn=$(((NOFILE - 100) / 2))
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $maxconn
    # No log line: nothing is logged.

defaults
    mode http
    maxconn $maxconn
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    timeout tunnel 1h

frontend fe
    $bind
    default_backend be

backend be
    http-reuse always
    $server
EOF
    start_bg "$d/haproxy.log" "${PROXY_PIN[@]}" haproxy -db -f "$d/haproxy.cfg"
    PROXY_MAIN=$LAST_PID
    PROXY_PID=$LAST_PID
    wait_port "$PROXY_PORT" "$PROXY_PID"
}

start_caddy() {
    local d site="http://:$PROXY_PORT" servers="" tls="" upstream="127.0.0.1:$BACKEND_PORT"
    d=$(work_dir caddy)
    mkdir -p "$d"
    # h2c://: HTTP/2 with prior knowledge to the backend's gRPC port.
    [[ "$KIND" == grpc ]] && upstream="h2c://127.0.0.1:$GRPC_PORT"
    if [[ "$KIND" != plain ]]; then
        # auto_https off still serves TLS with the given files; it only keeps Caddy
        # from getting certificates (from the network) and from redirecting. No h3:
        # it would add a UDP listener and an Alt-Svc header to every response.
        site="https://127.0.0.1:$PROXY_PORT"
        servers=$'\tservers {\n\t\tprotocols h1 h2\n\t}'
        tls=$'\ttls '"$CERT $KEY"$' {\n\t\tprotocols tls1.3\n\t}'
    fi
    cat >"$d/Caddyfile" <<EOF
{
	admin off
	auto_https off
$servers
	# Errors only; no access log is configured.
	log default {
		level ERROR
	}
}

$site {
	bind 127.0.0.1
$tls
	reverse_proxy $upstream {
		transport http {
			keepalive 600s
			keepalive_idle_conns $(upstream_idle)
			keepalive_idle_conns_per_host $(upstream_idle)
		}
	}
}
EOF
    start_bg "$d/caddy.log" env GOMAXPROCS=1 HOME="$d" XDG_CONFIG_HOME="$d/config" \
        XDG_DATA_HOME="$d/data" "${PROXY_PIN[@]}" caddy run --adapter caddyfile --config "$d/Caddyfile"
    PROXY_MAIN=$LAST_PID
    PROXY_PID=$LAST_PID
    wait_port "$PROXY_PORT" "$PROXY_PID"
}

# The floor: a bare TCP relay (benches/floor/), one thread, epoll, a fixed buffer
# per direction; what relaying bytes through a process costs, and nothing else.
start_floor() {
    local d
    d=$(work_dir floor)
    mkdir -p "$d"
    start_bg "$d/floor.log" "${PROXY_PIN[@]}" "$FLOOR" --listen "127.0.0.1:$PROXY_PORT" \
        --upstream "127.0.0.1:$BACKEND_PORT"
    PROXY_MAIN=$LAST_PID
    PROXY_PID=$LAST_PID
    wait_port "$PROXY_PORT" "$PROXY_PID"
}

# The backend reached straight away: no proxy, the ceiling of the machine.
start_direct() {
    PROXY_MAIN=""
    PROXY_PID=""
    PROXY_PORT=$BACKEND_PORT
}

proxy_log() {
    case "$1" in
    sluice | sluice-opaque | sluice-uring) echo "$(work_dir "$1")/sluice.log" ;;
    nginx) echo "$(work_dir nginx)/error.log" ;;
    haproxy) echo "$(work_dir haproxy)/haproxy.log" ;;
    caddy) echo "$(work_dir caddy)/caddy.log" ;;
    floor) echo "$(work_dir floor)/floor.log" ;;
    *) echo "$WORK/backend-$1.log" ;;
    esac
}

version_of() {
    case "$1" in
    sluice) echo "sluice $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')" ;;
    sluice-opaque) echo "sluice $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), SLUICE_WS_FRAMES=0" ;;
    sluice-uring) echo "sluice $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), SLUICE_WS_FRAMES=0 SLUICE_IO_URING=1" ;;
    nginx) nginx -v 2>&1 | sed 's/^nginx version: //' ;;
    haproxy) haproxy -v 2>/dev/null | head -n1 | awk '{print "HAProxy " $3}' ;;
    caddy) echo "Caddy $(caddy version 2>/dev/null | awk '{print $1}')" ;;
    floor) echo "floor (benches/floor; mio $(awk '/^name = "mio"$/ { getline; print $3 }' "$ROOT/Cargo.lock" | tr -d '"'))" ;;
    esac
}

# ---- Running the scenarios ----
FAILURES=()
RETRIED=()
if ((QUICK)); then RETRIES=4; else RETRIES=$((8 * ROUNDS)); fi

# run_load TARGET SCENARIO MODE [loadgen args...]: one loadgen run, its summary shown.
# A run during which other processes on the machine took more than a tenth of a core
# is run again after a pause, at most twice and within a budget for the whole run;
# the results keep the last attempt.
run_load() {
    local target=$1 scenario=$2 mode=$3
    shift 3
    local probe=()
    if [[ -n "$PROXY_PID" ]]; then
        probe=(--proxy-pid "$PROXY_PID")
    fi
    # nginx's master is part of the benchmark too, not other work on the machine.
    if [[ -n "$PROXY_MAIN" && "$PROXY_MAIN" != "$PROXY_PID" ]]; then
        probe+=(--client-pid "$PROXY_MAIN")
    fi
    local log="$WORK/loadgen-$target-$scenario.log" pid rc others tries=0
    # Each attempt writes its record apart; only the one kept joins the results.
    local attempt="$WORK/attempt.jsonl"
    while :; do
        : >"$attempt"
        start_bg "$log" "${CLIENT_PIN[@]}" "$LOADGEN" "$mode" --target "127.0.0.1:$PROXY_PORT" \
            --label "$target" --scenario "$scenario" --json "$attempt" \
            "${probe[@]}" --client-pid "$BACKEND_PID" "${PROBE_CORES[@]}" "$@"
        pid=$LAST_PID
        wait "$pid"
        rc=$?
        # Its summary, without the JSON line (that is in the results file).
        grep -v '^{' "$log" | grep -v '^READY' | sed 's/^/    /' >&2
        # Time for the connections just closed to be gone from the proxy.
        sleep 0.3
        others=$(grep -o '"others_cores":[0-9.]*' "$log" | cut -d: -f2)
        if ((rc == 0 && RETRIES > 0 && tries < 2)) && [[ -n "$others" ]] &&
            awk -v x="$others" 'BEGIN { exit !(x > 0.10) }'; then
            RETRIES=$((RETRIES - 1))
            tries=$((tries + 1))
            ((tries == 1)) && RETRIED+=("$target/$scenario")
            echo "    (other processes were busy: running it again in 3 s)" >&2
            sleep 3
            continue
        fi
        break
    done
    cat "$attempt" >>"$RESULTS"
    if ((rc != 0)); then
        FAILURES+=("$target/$scenario: loadgen exited with $rc (see the summary above)")
    fi
}

# scenario TARGET SCENARIO MODE [loadgen args...]: run_load when the scenario was
# asked for (--scenarios); fails when the proxy did not survive it.
scenario() {
    local t=$1
    scenario_wanted "$2" || return 0
    run_load "$@"
    alive "$t"
}

# The plain scenarios in table order, for one target already listening (KIND plain).
run_scenarios() {
    local t=$1 round=$2
    if ((round == 1)) && scenario_wanted idle; then
        # A short warm-up, not recorded, so that the memory baseline below is that
        # of a proxy that has served traffic, not of one fresh from start.
        "${CLIENT_PIN[@]}" "$LOADGEN" handshakes --target "127.0.0.1:$PROXY_PORT" \
            --concurrency 4 --warmup 0 --duration 0.3 >/dev/null 2>&1
        sleep 0.3

        # Idle first: after the heavy scenarios, allocator caches would hide the cost.
        scenario "$t" idle idle --connections "$IDLE_N" --surge-ms "$SURGE_MS" \
            --settle-ms "$SETTLE_MS" || return
    fi
    scenario "$t" ws64-w8 throughput --connections 100 --window 8 --size 64 \
        --warmup "$WARMUP" --duration "$DURATION" || return
    scenario "$t" ws64-w128 throughput --connections 100 --window 128 --size 64 \
        --warmup "$WARMUP" --duration "$DURATION" || return
    scenario "$t" ws64k-w4 throughput --connections 10 --window 4 --size 65536 \
        --warmup "$WARMUP" --duration "$DURATION" || return
    scenario "$t" pingpong pingpong --size 64 --warmup "$WARMUP" --duration "$DURATION" || return
    scenario "$t" handshakes handshakes --concurrency 50 \
        --warmup "$WARMUP" --duration "$DURATION" || return
    scenario "$t" http http --connections 50 --body-len "$HTTP_BODY" \
        --warmup "$WARMUP" --duration "$DURATION" || return
}

# The h2 and grpc scenarios: h2load's clients, each with this many streams in flight.
H2_CONNS=50
H2_STREAMS=10
H2_TITLE="HTTP/2 GET over TLS, $H2_CONNS conns × $H2_STREAMS streams"
GRPC_TITLE="gRPC unary over TLS, $H2_CONNS conns × $H2_STREAMS streams"
# The method every call names, and the payload of the message each sends.
GRPC_PATH=/bench.Echo/Unary
GRPC_MESSAGE_LEN=64

# The TLS scenarios of this start (as KIND says) that were asked for, in table order.
kind_scenarios() {
    local s
    if [[ "$KIND" == grpc ]]; then
        scenario_wanted grpc && echo grpc
    else
        for s in $TLS_SCENARIOS; do
            scenario_wanted "$s" && echo "$s"
        done
    fi
}

# "mode|title" of TLS scenario $1, for the records of targets that do not run it:
# the same as loadgen writes, so that the row reads the same whichever record
# comes first.
tls_row() {
    case "$1" in
    wss-handshakes) echo "handshakes|wss handshakes, concurrency 50" ;;
    wss64-w8) echo "throughput|wss 64 B × 100 conns × window 8" ;;
    wss64k-w4) echo "throughput|wss 64 KiB × 10 conns × window 4" ;;
    https) echo "http|HTTPS GET keep-alive, 50 conns" ;;
    h2) echo "h2load|$H2_TITLE" ;;
    grpc) echo "grpc|$GRPC_TITLE" ;;
    esac
}

# tls_records TARGET WHY [error]: a record for each TLS scenario of this start that
# TARGET did not run: skipped, for WHY (its cells show a plain "—"), or with "error"
# a failure whose first error is WHY.
tls_records() {
    local t=$1 why=$2 error=${3:-} s row
    for s in $(kind_scenarios); do
        row=$(tls_row "$s")
        if [[ -n "$error" ]]; then
            printf '{"scenario":"%s","title":"%s","mode":"%s","target":"%s","errors_total":1,"first_error":"%s"}\n' \
                "$s" "${row#*|}" "${row%%|*}" "$t" "$why"
        else
            printf '{"scenario":"%s","title":"%s","mode":"%s","target":"%s","skipped":"%s"}\n' \
                "$s" "${row#*|}" "${row%%|*}" "$t" "$why"
        fi
    done >>"$RESULTS"
}

# The TLS scenarios of KIND tls for one target listening with its TLS listener:
# loadgen's WebSocket and HTTP/1.1 rows over rustls (TLS 1.3, one suite, one group,
# ALPN http/1.1 alone, no resumption), then h2load's HTTP/2 row.
tls_scenarios() {
    local t=$1
    local tls=(--tls-cert "$CERT" --cipher "$TLS_CIPHER" --group "$TLS_GROUP"
        --warmup "$WARMUP" --duration "$DURATION")
    scenario "$t" wss-handshakes handshakes --concurrency 50 "${tls[@]}" || return
    scenario "$t" wss64-w8 throughput --connections 100 --window 8 --size 64 "${tls[@]}" || return
    scenario "$t" wss64k-w4 throughput --connections 10 --window 4 --size 65536 "${tls[@]}" || return
    scenario "$t" https http --connections 50 --body-len "$HTTP_BODY" "${tls[@]}" || return
    scenario "$t" h2 h2load --connections "$H2_CONNS" --streams "$H2_STREAMS" \
        --h2load "$H2LOAD" --cipher "$TLS_CIPHER" --group "$TLS_GROUP" \
        --warmup "$WARMUP" --duration "$DURATION"
}

# The scenarios of the start KIND says (tls or grpc) for one target, against its own
# start of the proxy with a TLS listener. A target that cannot serve them gets a
# record saying why, so its cells show "—"; the run goes on.
run_tls() {
    local t=$1 round=$2
    [[ -n "$(kind_scenarios)" ]] || return 0
    if ! ends_tls "$t"; then
        # Nothing to measure, once.
        if ((round == 1)); then
            case "$t" in
            direct) tls_records "$t" "no proxy to end TLS: the echo backend speaks HTTP/1.1 and h2c only" ;;
            *) tls_records "$t" "the floor relays plain TCP: it cannot end TLS" ;;
            esac
        fi
        return 0
    fi
    if start_target "$t"; then
        if [[ "$KIND" == grpc ]]; then
            grpc_trailers "$t"
            scenario "$t" grpc grpc --connections "$H2_CONNS" --streams "$H2_STREAMS" \
                --h2load "$H2LOAD" --cipher "$TLS_CIPHER" --group "$TLS_GROUP" \
                --warmup "$WARMUP" --duration "$DURATION" --path "$GRPC_PATH" \
                --message-len "$GRPC_MESSAGE_LEN" --backend-counts "127.0.0.1:$BACKEND_PORT"
        else
            tls_scenarios "$t"
        fi
    else
        tls_records "$t" "did not start with a TLS listener (see its log)" error
    fi
    # For nginx this is the master; stopping it stops the worker too.
    [[ -n "$PROXY_MAIN" ]] && stop_pid "$PROXY_MAIN"
    return 0
}

# One gRPC call through target $1 with curl, before the load: h2load sees HTTP
# statuses only, so this is where the trailers are seen to arrive. The response head
# and trailers are kept in $WORK/grpc-curl-<target>.txt (curl's complaints beside
# it, .err); a call without grpc-status 0 in trailers after the head is a problem.
GRPC_TRAILERS=()
grpc_trailers() {
    local t=$1 out="$WORK/grpc-curl-$1.txt"
    if [[ ! -f "$WORK/grpc-message.bin" ]]; then
        # A zero flag byte, the length 5 in four big-endian bytes, "hello".
        printf '\0\0\0\0\5hello' >"$WORK/grpc-message.bin"
    fi
    # The trailers are written after the blank line that ends the response head.
    curl -sS --http2 --insecure --max-time 10 -o /dev/null -D "$out" -X POST \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary "@$WORK/grpc-message.bin" "https://127.0.0.1:$PROXY_PORT$GRPC_PATH" \
        2>"$out.err"
    if awk 'NR == 1 { h2 = /^HTTP\/2 200/ } /^\r?$/ { body = 1 }
            body && tolower($0) ~ /^grpc-status: 0\r?$/ { ok = 1 }
            END { exit !(h2 && ok) }' "$out"; then
        # Once per target, though the check runs every round.
        [[ " ${GRPC_TRAILERS[*]} " == *" $t "* ]] || GRPC_TRAILERS+=("$t")
        echo "    one call with curl: HTTP/2 200, grpc-status 0 in the trailers" >&2
    else
        FAILURES+=("$t/grpc: a call through it with curl did not end in trailers with grpc-status 0 (see $out with --keep)")
        echo "    one call with curl did not end in grpc-status 0 trailers:" >&2
        cat "$out" "$out.err" 2>/dev/null | sed 's/^/      /' >&2
    fi
}

# Whether the proxy (and the backend) still run; a crash is reported with its log.
alive() {
    local t=$1
    if [[ -n "$PROXY_PID" ]] && ! kill -0 "$PROXY_PID" 2>/dev/null; then
        FAILURES+=("$t: the proxy exited during the run; the rest of its scenarios were skipped")
        echo "    $t exited! last lines of $(proxy_log "$t"):" >&2
        tail -n 20 "$(proxy_log "$t")" 2>/dev/null | sed 's/^/      /' >&2
        return 1
    fi
    if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
        FAILURES+=("$t: the echo backend exited during the run")
        return 1
    fi
    return 0
}

# The targets in round R: the list turned by R - 1, so that no target always runs
# first, or always right after the same other one.
round_order() {
    local round=$1 list
    read -r -a list <<<"$TARGETS"
    local n=${#list[@]} i
    for ((i = 0; i < n; i++)); do
        printf '%s ' "${list[$(((i + round - 1) % n))]}"
    done
}

# Starts target $1 (as KIND says, on PROXY_PORT); when it does not start, says so
# with the end of its log and fails.
VERSIONS=()
VERSIONED=" "
start_target() {
    local t=$1 how=""
    [[ "$KIND" != plain ]] && how=" with its TLS listener"
    PROXY_MAIN=""
    PROXY_PID=""
    if "start_$t"; then
        if [[ "$t" != direct && "$VERSIONED" != *" $t "* ]]; then
            VERSIONS+=("$(version_of "$t")")
            VERSIONED+="$t "
        fi
        return 0
    fi
    FAILURES+=("$t: did not start$how; see the end of its log above")
    echo "    $t did not start$how; the end of $(proxy_log "$t"):" >&2
    tail -n 20 "$(proxy_log "$t")" 2>/dev/null | sed 's/^/      /' >&2
    return 1
}

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for t in $(round_order "$ROUND"); do
        if ((ROUNDS > 1)); then say "$t (round $ROUND of $ROUNDS)"; else say "$t"; fi
        read -r BACKEND_PORT PLAIN_PORT TLS_PORT GRPC_PORT < <("$LOADGEN" free-ports 4 | tr '\n' ' ')
        [[ -n "${GRPC_PORT:-}" ]] || die "no free ports"
        # A fresh backend per target, so that none inherits another's state; its h2c
        # gRPC port only when the grpc scenario runs.
        grpc_listen=()
        scenario_wanted grpc && grpc_listen=(--grpc-listen "127.0.0.1:$GRPC_PORT")
        start_bg "$WORK/backend-$t.log" "${CLIENT_PIN[@]}" "$BACKEND" \
            --listen "127.0.0.1:$BACKEND_PORT" --body-len "$HTTP_BODY" "${grpc_listen[@]}"
        BACKEND_PID=$LAST_PID
        wait_port "$BACKEND_PORT" "$BACKEND_PID" || die "the echo backend did not start"
        if ((${#grpc_listen[@]})); then
            wait_port "$GRPC_PORT" "$BACKEND_PID" || die "the echo backend's gRPC port did not open"
        fi

        if [[ -n "${PLAIN_SCENARIOS// /}" ]]; then
            KIND=plain
            PROXY_PORT=$PLAIN_PORT
            start_target "$t" && run_scenarios "$t" "$ROUND"
            # For nginx this is the master; stopping it stops the worker too.
            [[ -n "$PROXY_MAIN" ]] && stop_pid "$PROXY_MAIN"
        fi
        for KIND in tls grpc; do
            PROXY_PORT=$TLS_PORT
            run_tls "$t" "$ROUND"
        done
        KIND=plain
        stop_pid "$BACKEND_PID"
    done
done

# ---- The table ----
ELAPSED=$(($(date +%s) - T0))
NOTES=()
# Milliseconds as seconds: 1500 -> 1.5.
secs() { awk -v ms="$1" 'BEGIN { printf "%g", ms / 1000 }'; }
if scenario_wanted idle; then
    idle_note="Idle tunnels: $IDLE_N per target"
    ((IDLE_CAPPED)) && idle_note="Idle tunnels: $IDLE_N, not $IDLE_WANTED: a proxy holds two descriptors per tunnel and the hard open-file limit here is $NOFILE (ulimit -Hn), so N is capped at (limit − 200) / 2"
    NOTES+=("$idle_note. KiB/tunnel is the growth of the proxy's resident memory (VmRSS) from before the first tunnel opened, divided by the tunnels: read as the last one opened (the \"as the last opened\" row: what the surge of handshakes still holds) and again $(secs "$SETTLE_MS") s after it (settled).")
fi
if ((ROUNDS > 1)); then
    MEASURED="${DURATION} s measured, in $ROUNDS rounds (every target in turn, restarted and in a different order each round); each cell is the median of its rounds"
else
    MEASURED="${DURATION} s measured"
fi
NOTES+=("$PIN_NOTE Each rate: ${WARMUP} s warm-up, then $MEASURED; $( ((QUICK)) && echo quick || echo full) run, ${ELAPSED} s in all.")
if ((${#RETRIED[@]})); then
    NOTES+=("Run again because other processes were busy: ${RETRIED[*]}.")
fi

# The string value of key $1 in the JSON text $2 (flat: no nesting, no escapes).
json_str() { grep -o "\"$1\":\"[^\"]*\"" <<<"$2" | head -n1 | cut -d'"' -f4; }

# What each target's TLS handshakes settled on in the scenarios named by the
# extended regular expression $1, as its client reported it (h2load, or loadgen's
# rustls), grouped: "nginx, caddy: h2, TLSv1.3, ...".
tls_negotiated() {
    local scenarios=$1 line t tls what i found
    local whats=() whos=()
    while IFS= read -r line; do
        t=$(json_str target "$line")
        tls=$(grep -o '"tls":{[^}]*}' <<<"$line")
        [[ -n "$(json_str protocol "$tls")" ]] || continue
        what="$(json_str alpn "$tls"), $(json_str protocol "$tls"), $(json_str cipher "$tls"), key exchange $(json_str temp_key "$tls")"
        [[ -n "$(json_str alpn "$tls")" ]] || what="no ALPN$what"
        found=0
        for i in "${!whats[@]}"; do
            if [[ "${whats[$i]}" == "$what" ]]; then
                found=1
                [[ " ${whos[$i]} " == *" $t "* ]] || whos[i]+=" $t"
            fi
        done
        ((found)) || {
            whats+=("$what")
            whos+=("$t")
        }
    done < <(grep -E "\"scenario\":\"($scenarios)\"" "$RESULTS")
    for i in "${!whats[@]}"; do
        ((i)) && printf '; '
        printf '%s: %s' "${whos[$i]// /, }" "${whats[$i]}"
    done
}
# The number value of key $1 in the JSON text $2 (flat, as json_str).
json_num() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -n1 | cut -d: -f2; }

# For each grpc record: "sluice round 1 11,900 of 12,000 (2 connections)": the calls
# the backend answered with grpc-status 0 over the measured interval, of those h2load
# counted, and the HTTP/2 connections the proxy had opened to it.
grpc_calls() {
    local line t calls first=1
    local -A rounds=()
    while IFS= read -r line; do
        calls=$(grep -o '"backend_calls":{[^}]*}' <<<"$line")
        [[ -n "$calls" ]] || continue
        t=$(json_str target "$line")
        rounds[$t]=$((${rounds[$t]:-0} + 1))
        ((first)) || printf ', '
        first=0
        printf '%s round %s %s of %s, %s refused (%s connections)' "$t" "${rounds[$t]}" \
            "$(json_num ok "$calls")" "$(json_num requests "$line")" \
            "$(json_num refused "$calls")" "$(json_num connections "$calls")"
    done < <(grep '"mode":"grpc"' "$RESULTS")
}
WSS_WANTED=""
for s in wss-handshakes wss64-w8 wss64k-w4 https; do
    scenario_wanted "$s" && WSS_WANTED+="${WSS_WANTED:+|}$s"
done
if [[ -n "$WSS_WANTED" ]]; then
    negotiated=$(tls_negotiated "$WSS_WANTED")
    NOTES+=("wss and HTTPS rows (${WSS_WANTED//|/, }): loadgen (rustls, one thread, on CPU 1) against the same TLS listener of each proxy as the HTTP/2 row, same certificate, TLS 1.3 only; loadgen offers only $TLS_CIPHER and $TLS_GROUP and ALPN http/1.1 alone, trusts exactly the bench certificate, and resumes no session: every connection of the wss handshakes row makes a full handshake (TCP connect, TLS, upgrade, one echo, closing handshake, close). The direct and floor columns are empty: nothing there ends TLS. Negotiated (as loadgen's rustls reported it, each handshake checked): ${negotiated:-nothing, no target completed it}.")
fi
if scenario_wanted h2; then
    negotiated=$(tls_negotiated h2)
    NOTES+=("$H2_TITLE: h2load ($(h2load --version 2>/dev/null | awk '{print $2}'), one thread, on CPU 1) against each proxy's TLS listener; every proxy has the same ECDSA P-256 certificate and allows TLS 1.3 only, h2load offers only $TLS_CIPHER and $TLS_GROUP, ALPN h2 alone, and the proxies speak HTTP/1.1 with keep-alive to the backend (up to $(KIND=tls upstream_idle) idle connections kept). The direct and floor columns are empty: the backend speaks HTTP/1.1 only, the floor cannot end TLS. Negotiated (as h2load reported it): ${negotiated:-nothing, no target completed it}.")
fi
if scenario_wanted grpc; then
    negotiated=$(tls_negotiated grpc)
    calls=$(grpc_calls)
    NOTES+=("$GRPC_TITLE: h2load against the same TLS listeners as the HTTP/2 row, each call a POST to $GRPC_PATH of one $GRPC_MESSAGE_LEN-byte message (framed: $((GRPC_MESSAGE_LEN + 5)) bytes) with content-type application/grpc and te: trailers; each proxy speaks HTTP/2 without TLS (h2c) to the echo backend's gRPC port, which answers with the same message and a grpc-status 0 trailer (sluice protocol = \"h2\", nginx grpc_pass grpc://, HAProxy server ... proto h2, Caddy reverse_proxy h2c://). The direct and floor columns are empty: nothing there ends TLS. Calls the backend answered over HTTP/2 with grpc-status 0 during the measured interval, of those h2load counted as succeeded (they differ by the calls in flight at its edges): ${calls:-none}. Trailers with grpc-status 0 seen through one curl --http2 call: ${GRPC_TRAILERS[*]:-none}. Negotiated (as h2load reported it): ${negotiated:-nothing, no target completed it}.")
fi
if ((${#VERSIONS[@]})); then
    joined=$(
        IFS=,
        echo "${VERSIONS[*]}"
    )
    NOTES+=("Versions: ${joined//,/, }.")
fi
read -r -a COLUMNS <<<"$TARGETS"
say "results"
# The best peer of the ratio column is one of the other proxies, never the direct,
# floor, sluice-opaque or sluice-uring columns, which are references, not peers.
"$LOADGEN" report --results "$RESULTS" --peers nginx,haproxy,caddy --targets "$(
    IFS=,
    echo "${COLUMNS[*]}"
)" "${NOTES[@]/#/--note=}" | tee "$TABLE"
echo
echo "Raw results: $RESULTS"
echo "Table:       $TABLE"
if ((${#FAILURES[@]})); then
    echo
    echo "Problems:"
    printf '  - %s\n' "${FAILURES[@]}"
    exit 1
fi
