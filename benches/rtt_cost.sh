#!/usr/bin/env bash
# What one echo round trip costs each process on the path: one connection
# through `tether connect` to demo-1's echo service, N round trips of 64
# bytes, then per round trip the CPU time (user + system) and the context
# switches of relay-a, the agent and the forwarder, and the round trips'
# p50/p99 as the (python) client saw them. An echo round trip is bounded by
# this work and these wake-ups on the host's cores, not by any one place in
# tether's code. Needs python3. Loopback only; stops what it starts (by pid);
# uses tether dev's fixed ports: run nothing else on them.
#   benches/rtt_cost.sh                        (QUIC legs, 20000 round trips)
#   N=5000 TETHER_TRANSPORT=tcp BIN=path/to/tether benches/rtt_cost.sh
set -euo pipefail
N=${N:-20000}
source "$(dirname "$0")/lib/dev.sh"
"$BIN" dev init --dir d >/dev/null 2>init.err
dev_up
"$BIN" connect --profile d/client.toml demo-1 echo --listen 127.0.0.1:15204 >connect.out 2>connect.err & pids+=($!); connect=$!
for _ in $(seq 50); do grep -q ready connect.out 2>/dev/null && break; sleep 0.2; done
declare -A who
path_pids "$connect"
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
echo_rtt() {
  python3 - "$1" <<'PY'
import socket, sys, time
n = int(sys.argv[1])
s = socket.create_connection(('127.0.0.1', 15204), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg, out = b'x' * 64, []
for _ in range(n):
    t = time.perf_counter()
    s.sendall(msg)
    got = 0
    while got < 64:
        got += len(s.recv(64 - got))
    out.append(time.perf_counter() - t)
out.sort()
print(f"echo rtt over {n} round trips: p50 {out[n // 2] * 1e6:.0f} us, p99 {out[n * 99 // 100] * 1e6:.0f} us")
PY
}
grep -o "via .*" connect.out || true
echo_rtt 1000 >/dev/null # warm-up
declare -A t0 c0
for p in "${!who[@]}"; do t0[$p]=$(ticks "$p"); c0[$p]=$(switches "$p"); done
echo_rtt "$N"
hz=$(getconf CLK_TCK)
for p in "${!who[@]}"; do
  t=$(( $(ticks "$p") - ${t0[$p]} )); c=$(( $(switches "$p") - ${c0[$p]} ))
  python3 -c "print(f'${who[$p]} (pid $p): {$t / $hz / $N * 1e6:.1f} us of CPU and {$c / $N:.2f} context switches per round trip')"
done
