#!/usr/bin/env bash
# End to end: the whole system as `tools/run-local --demo` runs it (all five real binaries wired
# to each other, a real PostgreSQL, the demo story through the Python gRPC client), in a
# temporary folder on free loopback ports, so it runs beside a developer's own local stack.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

work="$(mktemp -d /tmp/peerpath-e2e.XXXXXX)"
chmod 755 "$work"  # PostgreSQL runs as another user and must reach its data folder inside.
trap 'rm -rf "$work"' EXIT

# Three port ranges: PostgreSQL, and base+1..base+5 for gRPC and for metrics, all free now and
# all below the kernel's ephemeral range, so no outgoing connection of a test running beside
# this one can take one of them as its local port before our servers bind it.
read -r pg grpc_base metrics_base < <(/usr/bin/python3 - <<'PY'
import random, socket
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    ephemeral_low = int(f.read().split()[0])
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
picked = []
while len(picked) < 3:
    base = random.randrange(10000, max(10010, ephemeral_low - 10), 10)
    if base not in picked and all(free(base + i) for i in range(0, 6)):
        picked.append(base)
print(picked[0], picked[1], picked[2])
PY
)

PEERPATH_SKIP_BUILD=1 PEERPATH_LOCAL_DIR="$work" PEERPATH_LOCAL_PG_PORT="$pg" \
  PEERPATH_LOCAL_GRPC_PORT_BASE="$grpc_base" PEERPATH_LOCAL_METRICS_PORT_BASE="$metrics_base" \
  "$root/tools/run-local" --demo || {
  status=$?
  for log in "$work"/logs/*.log; do
    echo "---- $log (last lines)"
    tail -n 20 "$log"
  done
  exit "$status"
}
