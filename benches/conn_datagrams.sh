#!/usr/bin/env bash
# What one new tunnelled connection costs: N times (new connection through
# `tether connect`, a 1-byte echo, close) with the peer kit's `probe
# connect`, then per connection the CPU time of relay-a, the agent and the
# forwarder, and the UDP datagrams the host sent (/proc/net/snmp: QUIC legs;
# TCP legs send none). Needs the peer kit's probe (../shared/bench-peers/
# README). Loopback only; stops what it starts (by pid); uses tether dev's
# fixed ports: run nothing else on them.
#   benches/conn_datagrams.sh                     (QUIC legs, N=3000)
#   N=2000 TETHER_TRANSPORT=tcp BIN=path/to/tether PROBE=... benches/conn_datagrams.sh
set -euo pipefail
N=${N:-3000}
PROBE=${PROBE:-/tmp/peers/probe-target/release/probe}
source "$(dirname "$0")/lib/dev.sh"
"$PROBE" echo-server 127.0.0.1:15301 --max-secs 600 >/dev/null 2>&1 & pids+=($!)
"$BIN" dev init --dir d --service probe=127.0.0.1:15301 >/dev/null 2>init.err
dev_up
"$BIN" connect --profile d/client.toml demo-1 probe --listen 127.0.0.1:15204 >connect.out 2>connect.err & pids+=($!); connect=$!
for _ in $(seq 50); do grep -q ready connect.out 2>/dev/null && break; sleep 0.2; done
grep -o "via .*" connect.out || true
declare -A who t0
path_pids "$connect"
udp_out() { awk '/^Udp:/ {n++; if (n == 2) print $5}' /proc/net/snmp; }
"$PROBE" connect 127.0.0.1:15204 --n 300 >/dev/null # warm-up
for p in "${!who[@]}"; do t0[$p]=$(ticks "$p"); done
u0=$(udp_out)
"$PROBE" connect 127.0.0.1:15204 --n "$N" | tail -1
u1=$(udp_out)
hz=$(getconf CLK_TCK); sum=0; line=""
for p in "${!who[@]}"; do
  t=$(( $(ticks "$p") - ${t0[$p]} )); sum=$((sum + t))
  line="$line ${who[$p]} $((t * 1000000 / hz / N)),"
done
echo "CPU per connection (us):$line together $((sum * 1000000 / hz / N)); UDP datagrams per connection $(awk -v d=$((u1 - u0)) -v n="$N" 'BEGIN {printf "%.1f", d / n}')"
