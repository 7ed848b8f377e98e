#!/bin/sh
# The container entrypoint: raise the open-files limit, then become sluice.
#
# Every client connection is a file descriptor and every tunnel is two (client and
# upstream). Container runtimes commonly start processes with a soft limit of 1024 and a
# far higher hard limit, which would make sluice refuse connections long before
# `[limits] max_connections`. Raising the soft limit up to the hard limit needs no
# privilege. (Kubernetes has no pod setting for this limit, hence doing it here.)
#
# `exec` replaces this shell, so sluice is PID 1 and receives SIGTERM and SIGHUP itself.
# It installs handlers for both and starts no child processes, so no init is needed.
set -eu

# -H and -S are not POSIX, but Debian's /bin/sh (dash) has them, as do bash and busybox.
# shellcheck disable=SC3045
hard="$(ulimit -Hn)"
# shellcheck disable=SC3045
if ! ulimit -Sn "$hard" 2>/dev/null; then
    echo "sluice-entrypoint: cannot raise the open-files limit; it stays at $(ulimit -Sn)" >&2
fi

exec /usr/local/bin/sluice "$@"
