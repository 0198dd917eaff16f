#!/usr/bin/env bash
# CPU per new tunnelled connection, in each process: `tether dev` with BIN,
# then `tether loadgen latency -n 2000` (one connection at a time, so the
# critical path is CPU-bound: the sum is close to the latency). Loopback only;
# stops what it starts. Uses tether dev's fixed ports: run nothing else on them.
#   benches/conn_cpu.sh [BIN]        (default target/release/tether)
set -u
bin=$(realpath "${1:-target/release/tether}")
n=2000
work=$(mktemp -d)
cd "$work" || exit 1
"$bin" dev > dev.out 2>&1 &
dev=$!
for _ in $(seq 1 600); do grep -q "is up" dev.out && break; sleep 0.1; done
sleep 2
# "pids: hub 1, relay-a 2, relay-b 3, agent 4" -> "hub=1 relay-a=2 ..."
parts="$(grep -o "pids: .*" dev.out | sed 's/^pids: //; s/,//g' | awk '{for (i = 1; i < NF; i += 2) printf "%s=%s ", $i, $(i + 1)}')dev+echo=$dev"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A before
for kv in $parts; do before[${kv#*=}]=$(ticks "${kv#*=}"); done
out=$( { /usr/bin/time -f "LOADGEN %U %S" "$bin" loadgen latency --profile tether-dev/client.toml -n $n; } 2>&1)
echo "$out" | grep "client leg start"
hz=$(getconf CLK_TCK)
line="loadgen (the client) $(echo "$out" | awk -v n=$n '/^LOADGEN/ {printf "%.0f", ($2 + $3) * 1e6 / n}') us"
for kv in $parts; do
    p=${kv#*=}
    line="$line, ${kv%%=*} $(( ($(ticks "$p") - ${before[$p]}) * 1000000 / hz / n )) us"
done
echo "CPU per connection: $line"
kill -INT "$dev"
wait "$dev" 2>/dev/null
cd / && rm -rf "$work"
