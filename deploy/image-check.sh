#!/usr/bin/env bash
# Build deploy/Dockerfile with podman, unchanged, and check the image it makes: sluice
# answers /healthz, echoes a WebSocket through its default configuration, and stops
# cleanly on SIGTERM.
#
# No image registry is reachable from CI's machines, so the base images the Dockerfile
# names are made here, from what the machine has, and tagged with those names:
#
#   debian:bookworm-slim  a minimal bookworm (debootstrap --variant=minbase from the
#                         Debian mirror, upgraded, docs and man pages left out)
#   rust:1-bookworm       that, plus gcc, make and libc6-dev (jemalloc is built from C)
#                         and this machine's Rust toolchain under /usr/local/rustup and
#                         /usr/local/cargo, set up as in the official rust image
#
# An image of either name that this script did not make (pulled from a registry) is used
# as it is. The debootstrap'ed root file system is kept for a week under
# ${SLUICE_IMAGE_CACHE:-${XDG_CACHE_HOME:-/var/cache}/sluice-image}, and the images stay
# in podman's storage, so a second run rebuilds only what changed.
#
# Usage, as root from any directory (it installs podman and debootstrap when missing):
#
#   deploy/image-check.sh
#
# Environment: DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR (deb.debian.org's by default);
# SLUICE_IMAGE (the tag built, sluice:ci).
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${SLUICE_IMAGE_CACHE:-${XDG_CACHE_HOME:-/var/cache}/sluice-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
image=${SLUICE_IMAGE:-sluice:ci}
# Images this script made carry this label, so that it rebuilds only its own.
made_by=io.sluice.image-check

# ---- Reporting -------------------------------------------------------------------------
timings=()
stage_name=""
stage_start=0
stage() {
  stage_end
  stage_name=$*
  stage_start=$SECONDS
  printf '\n---- image: %s ----\n' "$*"
}
stage_end() {
  if [ -n "$stage_name" ]; then
    timings+=("$(printf '%6ss  %s' $((SECONDS - stage_start)) "$stage_name")")
    stage_name=""
  fi
}
pass() { printf 'PASS %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*" >&2
  exit 1
}

container=""
tmp=$(mktemp -d)
cleanup() {
  local rc=$?
  stage_end
  if [ -n "$container" ]; then
    if [ "$rc" -ne 0 ]; then
      echo "last lines of the container's log:" >&2
      podman logs "$container" 2>&1 | tail -n 40 | sed 's/^/  | /' >&2 || true
    fi
    podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  printf '\n---- image: timings ----\n'
  if [ ${#timings[@]} -gt 0 ]; then printf '%s\n' "${timings[@]}"; fi
  printf '%6ss  total\n' "$SECONDS"
  if [ "$rc" -eq 0 ]; then echo "PASS image check"; else echo "FAIL image check"; fi
}
trap cleanup EXIT

# ---- 1. Tools --------------------------------------------------------------------------
stage "tools"
[ "$(id -u)" -eq 0 ] || fail "run as root: debootstrap and rootful podman need it"
# Rootful podman needs nothing beyond its own dependencies (conmon, an OCI runtime, the
# CNI plugins, iptables): storage is the kernel's overlayfs, networking CNI's bridge.
# uidmap, fuse-overlayfs and slirp4netns are for rootless podman only.
need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
# How podman runs containers here. Two things seen on CI's virtual machines, and handled
# only where they are found:
# - cgroup v1 beside a cgroup2 hierarchy that has a controller ("hybrid"): crun 1.8, the
#   runtime Debian's podman uses by default, refuses every container ("cgroups in hybrid
#   mode not supported, drop all controllers from cgroupv2"); runc runs them.
# - root without CAP_SYS_RESOURCE: podman gives containers open-files and processes
#   limits of 1048576, which cannot be raised to from lower hard limits ("setrlimit:
#   Operation not permitted"). There a container gets this shell's hard open-files limit
#   and podman's own processes limit (podman lowers its own to kernel.pid_max).
podman_opts=()
if [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ] &&
  [ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then
  echo "cgroups: hybrid, with controllers on cgroup2: using runc, not crun"
  command -v runc >/dev/null || need+=(runc)
  podman_opts+=(--runtime runc)
fi
run_opts=()
cap_eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
if (((16#$cap_eff >> 24 & 1) == 0)); then
  nofile=$(ulimit -Hn)
  nproc=$(cat /proc/sys/kernel/pid_max)
  if [ "$(ulimit -Hu)" != unlimited ] && [ "$(ulimit -Hu)" -lt "$nproc" ]; then nproc=$(ulimit -Hu); fi
  echo "no CAP_SYS_RESOURCE: containers run with nofile=$nofile and nproc=$nproc"
  run_opts+=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
fi
podman() { command podman "${podman_opts[@]}" "$@"; }
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -c 'import websockets.sync.client' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check websockets
command -v rustup >/dev/null || fail "no rustup: the builder image is made from this machine's rustup toolchain"
podman --version
rustc --version

# The base images, as the Dockerfile names them (with its default build arguments).
rust_version=$(sed -n 's/^ARG RUST_VERSION=\([^[:space:]]*\).*/\1/p' deploy/Dockerfile | head -n 1)
builder_ref="" base_ref=""
while read -r from; do
  from=${from//\$\{RUST_VERSION\}/$rust_version}
  case "$from" in
    rust:*-bookworm) builder_ref=docker.io/library/$from ;;
    debian:bookworm-slim) base_ref=docker.io/library/$from ;;
    *) fail "deploy/Dockerfile builds FROM $from, which this script cannot make: teach it" ;;
  esac
done < <(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' deploy/Dockerfile)
if [ -z "$builder_ref" ] || [ -z "$base_ref" ]; then
  fail "expected FROM rust:\${RUST_VERSION}-bookworm and FROM debian:bookworm-slim in deploy/Dockerfile"
fi
echo "base images: $builder_ref, $base_ref"

# made_here REF: the image exists and this script made it.
made_here() {
  [ "$(podman image inspect --format "{{index .Labels \"$made_by\"}}" "$1" 2>/dev/null)" != "" ]
}
# foreign REF: the image exists and came from elsewhere (a registry); it is used as is.
foreign() { podman image exists "$1" && ! made_here "$1"; }

# ---- 2. debian:bookworm-slim -----------------------------------------------------------
stage "base image $base_ref"
mkdir -p "$cache"
rootfs_tar=$cache/debian-bookworm-minbase.tar
rebuilt_base=false
if foreign "$base_ref"; then
  echo "using $base_ref as found in podman's storage"
else
  if [ -z "$(find "$rootfs_tar" -mtime -7 2>/dev/null)" ]; then
    echo "debootstrap --variant=minbase bookworm from $mirror (log: $cache/debootstrap.log)"
    rootfs=$cache/rootfs
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
      tail -n 20 "$cache/debootstrap.log" >&2
      fail "debootstrap"
    }
    # What the official image does to be slim: no documentation, manuals or translations,
    # now or from later installs, and apt's caches emptied after each use.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    # The sources of the official image: the release, its updates and security.
    rm -f "$rootfs/etc/apt/sources.list" "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -cf "$rootfs_tar.part" .
    mv "$rootfs_tar.part" "$rootfs_tar"
    rm -rf "$rootfs"
  else
    echo "reusing $rootfs_tar (made $(date -r "$rootfs_tar" +%F); delete it to make it again)"
  fi
  if ! made_here "$base_ref" || [ "$rootfs_tar" -nt "$cache/base.stamp" ]; then
    podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      "$rootfs_tar" localhost/sluice-image-check/debootstrap:bookworm >/dev/null
    # Updates and security fixes since the point release, as the official image has them.
    mkdir -p "$tmp/base"
    cat >"$tmp/base/Containerfile" <<EOF
FROM localhost/sluice-image-check/debootstrap:bookworm
LABEL $made_by="debootstrap --variant=minbase bookworm $mirror"
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq \\
    && rm -rf /var/lib/apt/lists/*
EOF
    podman build --quiet --pull=never --network host -t "$base_ref" "$tmp/base" >/dev/null
    touch "$cache/base.stamp"
    rebuilt_base=true
  fi
fi
podman run "${run_opts[@]}" --rm --network none "$base_ref" cat /etc/debian_version | sed 's/^/debian_version: /'
pass "$base_ref"

# ---- 3. rust:1-bookworm ----------------------------------------------------------------
stage "builder image $builder_ref"
# The toolchain rustup runs here by default: its real directory, whatever it is called by.
sysroot=$(cd "$(rustc --print sysroot)" && pwd -P)
toolchain=$(basename "$sysroot")
# Certificate authorities this machine added to Debian's (update-ca-certificates): where
# outgoing TLS passes a proxy that re-signs it, as on CI's machines, cargo in the build
# must trust that proxy's authority to fetch crates. They go into the builder image only;
# the runtime stage is FROM debian:bookworm-slim and does not inherit them.
mapfile -t local_cas < <(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | sort)
builder_key="$(rustc --version); local CAs $(cat /dev/null "${local_cas[@]}" | sha256sum | cut -c1-16)"
if foreign "$builder_ref"; then
  echo "using $builder_ref as found in podman's storage"
elif [ "$rebuilt_base" = false ] && made_here "$builder_ref" &&
  [ "$(podman image inspect --format '{{index .Labels "io.sluice.image-check.key"}}' "$builder_ref")" = "$builder_key" ]; then
  echo "reusing $builder_ref ($builder_key)"
else
  ctx=$tmp/builder
  mkdir -p "$ctx/rustup/toolchains" "$ctx/cargo/bin" "$ctx/local-cas"
  for ca in "${local_cas[@]}"; do
    echo "trusting this machine's $ca in the builder image"
    cp "$ca" "$ctx/local-cas/"
  done
  # The toolchain without its HTML documentation (796 MB of its 1.4 GB for 1.95).
  tar -C "$(dirname "$sysroot")" --exclude="$toolchain/share/doc" -cf - "$toolchain" |
    tar -C "$ctx/rustup/toolchains" -xf -
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" >"$ctx/rustup/settings.toml"
  cp "$(command -v rustup)" "$ctx/cargo/bin/rustup"
  for proxy in cargo rustc rustdoc rust-gdb rust-lldb cargo-clippy clippy-driver cargo-fmt rustfmt; do
    ln -s rustup "$ctx/cargo/bin/$proxy"
  done
  version=$(rustc --version | cut -d' ' -f2)
  cat >"$ctx/Containerfile" <<EOF
FROM $base_ref
LABEL $made_by="$base_ref, gcc make libc6-dev, and the Rust toolchain of the machine that built it" \\
      io.sluice.image-check.key="$builder_key"
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$version
# Installing ca-certificates adds these to /etc/ssl/certs.
COPY local-cas /usr/local/share/ca-certificates
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
        ca-certificates gcc libc6-dev make >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN rustup --version && cargo --version && rustc --version
EOF
  podman build --pull=never --network host -t "$builder_ref" "$ctx"
  rm -rf "$ctx"
fi
pass "$builder_ref"

# ---- 4. The image ----------------------------------------------------------------------
stage "podman build -f deploy/Dockerfile -t $image ."
# --format docker keeps the HEALTHCHECK, which the OCI format has no field for.
# --network host: the build fetches crates from crates.io and curl from the Debian
# mirror, on the machine's own network (CNI's bridge works here too, but is not needed).
# Each line is prefixed with the seconds since the build began.
build_start=$SECONDS
podman build --pull=never --network host --format docker -f deploy/Dockerfile -t "$image" . 2>&1 |
  while IFS= read -r line; do printf '%5ds %s\n' $((SECONDS - build_start)) "$line"; done
pass "podman build -f deploy/Dockerfile -t $image ."
[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = "10001:10001" ] ||
  fail "the image's user is not 10001:10001"
pass "runs as user 10001:10001"
# One-shot runs without the HEALTHCHECK: podman would try to schedule it with systemd.
podman run "${run_opts[@]}" --rm --network none --no-healthcheck "$image" --version
podman run "${run_opts[@]}" --rm --network none --no-healthcheck "$image" -c /etc/sluice/sluice.toml --check
pass "sluice --version and --check of the image's configuration"

# ---- 5. Run it -------------------------------------------------------------------------
stage "run $image"
# The image's own configuration (0.0.0.0:8080 and admin 0.0.0.0:9900 inside the
# container), published on free loopback ports of this machine.
read -r http_port admin_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
container=sluice-image-check-$$
# Where systemd is not running, podman logs that it cannot schedule the HEALTHCHECK
# ("unable to get systemd connection"); the check is run once by hand below instead.
podman run "${run_opts[@]}" -d --name "$container" --stop-timeout 45 \
  -p "127.0.0.1:$http_port:8080" -p "127.0.0.1:$admin_port:9900" "$image" >/dev/null
deadline=$((SECONDS + 30))
until curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$admin_port/healthz" 2>/dev/null; do
  [ "$(podman inspect --format '{{.State.Running}}' "$container")" = true ] ||
    fail "the container exited: $(podman inspect --format '{{.State.ExitCode}}' "$container")"
  [ "$SECONDS" -lt "$deadline" ] || fail "no /healthz on 127.0.0.1:$admin_port within 30s"
  sleep 0.2
done
pass "/healthz answers on 127.0.0.1:$admin_port (container port 9900)"
podman healthcheck run "$container" || fail "the image's HEALTHCHECK"
pass "HEALTHCHECK (curl inside the container) healthy"
curl -fsS --max-time 5 "http://127.0.0.1:$http_port/" | grep -q '<title>sluice echo</title>' ||
  fail "GET / through sluice did not return the echo upstream's page"
pass "GET / through sluice: the echo upstream's page"

# A WebSocket echo through sluice; then SIGTERM with the tunnel open: /readyz turns 503,
# the tunnel echoes on until sluice's Close 1001 (sent at a random moment in the first
# half of the 30 s drain), and once it is closed sluice exits 0 well within the drain.
stage "websocket echo and SIGTERM"
python3 - "$container" "$http_port" "$admin_port" <<'EOF'
import subprocess, sys, time, urllib.error, urllib.request
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

name, http_port, admin_port = sys.argv[1:]

def readyz():
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code

def echo(ws, msg):
    ws.send(msg)
    got = ws.recv(timeout=10)
    if got != msg:
        sys.exit(f"FAIL echo: sent {msg!r}, got {got!r}")

with connect(f"ws://127.0.0.1:{http_port}/", open_timeout=10, close_timeout=5) as ws:
    echo(ws, "hello through the image")
    echo(ws, bytes(range(256)) * 256)
    print("PASS WebSocket echo through sluice (text, and 64 KiB binary)")
    if readyz() != 200:
        sys.exit("FAIL /readyz is not 200 before SIGTERM")
    subprocess.run(["podman", "kill", "--signal", "TERM", name], check=True, stdout=subprocess.DEVNULL)
    term = time.monotonic()
    while readyz() != 503:
        if time.monotonic() - term > 5:
            sys.exit("FAIL /readyz did not turn 503 within 5s of SIGTERM")
        time.sleep(0.1)
    print("PASS /readyz 503 after SIGTERM")
    echoed = 0
    try:
        while time.monotonic() - term < 20:
            echo(ws, f"draining {echoed}")
            echoed += 1
            time.sleep(0.05)
        sys.exit("FAIL no Close within 20s of SIGTERM (drain 30s, close_timeout 5s)")
    except ConnectionClosed as e:
        if e.rcvd is None or e.rcvd.code != 1001:
            sys.exit(f"FAIL the tunnel ended without a Close 1001: {e!r}")
        print(f"PASS the tunnel echoed {echoed} messages into the drain, then got Close 1001 "
              f"{time.monotonic() - term:.1f}s after SIGTERM")
code = subprocess.run(["podman", "wait", name], check=True, capture_output=True, text=True, timeout=45)
took = time.monotonic() - term
if code.stdout.strip() != "0":
    sys.exit(f"FAIL exit status {code.stdout.strip()} after SIGTERM")
if took > 30:
    sys.exit(f"FAIL sluice took {took:.1f}s to exit after SIGTERM, its last tunnel long closed")
print(f"PASS exit status 0, {took:.1f}s after SIGTERM")
EOF
podman logs "$container" 2>&1 | tail -n 8 | sed 's/^/  | /'
