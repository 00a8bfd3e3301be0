#!/usr/bin/env bash
# Start a Docker-compatible Engine API (Podman) on a unix socket for the docker launcher and its tests.
# usage: start_podman_api.sh SOCKET_PATH   (needs root, podman and runc)
set -euo pipefail
sock=${1:-/run/greentune-podman.sock}
mkdir -p /etc/containers
if ! grep -q greentune /etc/containers/containers.conf 2>/dev/null; then
  cat >>/etc/containers/containers.conf <<'CONF'
# greentune: a runtime and limits that work in this sandbox
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
fi
if [ -S "$sock" ] && curl -s --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  echo "podman API already at unix://$sock"; exit 0
fi
rm -f "$sock"
nohup podman system service --time=0 "unix://$sock" >/tmp/greentune-podman-service.log 2>&1 &
for _ in $(seq 50); do
  if curl -s --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then echo "podman API at unix://$sock"; exit 0; fi
  sleep 0.2
done
echo "podman API did not start; see /tmp/greentune-podman-service.log" >&2
tail -5 /tmp/greentune-podman-service.log >&2
exit 1
