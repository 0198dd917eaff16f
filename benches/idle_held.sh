#!/usr/bin/env bash
# What idle tunnelled connections cost while they are held: N connections
# through `tether connect` to demo-1's echo service (each echoes one byte,
# then nothing moves), then the CPU of relay-a, the agent and the forwarder
# over SECS seconds, and the UDP datagrams sent meanwhile (the host's
# counter: QUIC legs; 0 over TCP). Needs python3. Loopback only; stops what
# it starts (by pid); uses tether dev's fixed ports: run nothing else on them.
#   benches/idle_held.sh                       (QUIC legs, 1000 connections)
#   N=5000 TETHER_TRANSPORT=tcp BIN=path/to/tether benches/idle_held.sh
set -euo pipefail
N=${N:-1000}
source "$(dirname "$0")/lib/dev.sh"
"$BIN" dev init --dir d >/dev/null
dev_up
"$BIN" connect --profile d/client.toml demo-1 echo --listen 127.0.0.1:15203 >connect.out 2>connect.err & pids+=($!); connect=$!
for _ in $(seq 50); do grep -q ready connect.out 2>/dev/null && break; sleep 0.2; done
[ "$(ulimit -n)" -gt $((N + 100)) ] || ulimit -n $((N + 200))
python3 - "$N" <<'PY' & pids+=($!)
import socket, sys, time
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(('127.0.0.1', 15203), timeout=10)
    s.sendall(b'x')
    assert s.recv(1) == b'x'
    socks.append(s)
open('held', 'w').write('ok')
time.sleep(300)
PY
for _ in $(seq 1200); do [ -f held ] && break; sleep 0.1; done
[ -f held ] || { echo "the $N connections were not all established" >&2; exit 1; }
sleep 3
declare -A who
path_pids "$connect"
udp() { awk '/^Udp:/ {n++; if (n == 2) print $5}' /proc/net/snmp; }
SECS=${SECS:-10}
declare -A before
for p in "${!who[@]}"; do before[$p]=$(ticks "$p"); done
u0=$(udp); sleep "$SECS"; u1=$(udp)
hz=$(getconf CLK_TCK)
for p in "${!who[@]}"; do
  t=$(( $(ticks "$p") - ${before[$p]} ))
  python3 -c "t=$t/$hz; print(f'${who[$p]:-?} (pid $p): {t/$SECS:.1%} of a core, {t/$SECS/$N*1e6:.0f} us per second per held connection')"
done
echo "UDP datagrams sent: $(( (u1 - u0) / SECS ))/s for $N held connections"
