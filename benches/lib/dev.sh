# Sourced by the scripts in benches/: a scratch folder that is
# removed at exit with every process the script started (by pid), and
# `tether dev` (fixed loopback ports) with an iperf3 server as the device's
# `iperf` service, reachable through `tether connect` on 127.0.0.1:15202.
BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release/tether}
SECS=${SECS:-5}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

# The dev setup in ./d, with iperf3 on 127.0.0.1:15201 as service `iperf`.
dev_init() {
  iperf3 -s -B 127.0.0.1 -p 15201 >/dev/null 2>&1 & pids+=($!)
  "$BIN" dev init --dir d --service iperf=127.0.0.1:15201 >/dev/null
}

# Starts ./d and waits for its "is up" line.
dev_up() {
  "$BIN" dev up --dir d >dev.out 2>dev.err & pids+=($!)
  for _ in $(seq 100); do grep -q "tether dev is up" dev.out 2>/dev/null && break; sleep 0.2; done
  grep -q "tether dev is up" dev.out || { cat dev.err; exit 1; }
  sleep 1
}

# `tether connect` to demo-1's iperf service on 127.0.0.1:15202.
connect_iperf() {
  "$BIN" connect --profile d/client.toml demo-1 iperf --listen 127.0.0.1:15202 >connect.out 2>connect.err & pids+=($!)
  for _ in $(seq 50); do grep -q ready connect.out 2>/dev/null && break; sleep 0.2; done
}

# MiB/s iperf3 measures against PORT for SECS seconds (extra iperf3 flags after).
rate() { iperf3 -J -c 127.0.0.1 -p "$1" -t "$SECS" ${2:-} | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/2**20)'; }

# Fills the associative array `who` (declare -A who first): pid -> name, for
# relay-a and the agent (from dev's "pids: hub 1, relay-a 2, ..." line) and
# the forwarder whose pid is $1. `ticks PID`: its CPU so far, in clock ticks.
path_pids() {
  local kv
  for kv in $(grep -o "pids: .*" dev.out | sed 's/^pids: //; s/,//g' | awk '{for (i = 1; i < NF; i += 2) printf "%s=%s ", $i, $(i + 1)}'); do
    case ${kv%%=*} in relay-a|agent) who[${kv#*=}]=${kv%%=*} ;; esac
  done
  who[$1]=connect
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
