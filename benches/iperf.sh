#!/usr/bin/env bash
# Throughput of one tunnelled connection through real `tether` processes
# (two relays, agent, client) against direct loopback TCP, in the same run.
# Needs iperf3 (apt-get install -y iperf3). Loopback only; stops what it starts.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tether}
SECS=${SECS:-5}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
iperf3 -s -B 127.0.0.1 -p 15201 >/dev/null 2>&1 & pids+=($!)
"$BIN" dev init --dir d --service iperf=127.0.0.1:15201 >/dev/null
"$BIN" dev up --dir d >dev.out 2>dev.err & pids+=($!)
for _ in $(seq 50); do grep -q "tether dev is up" dev.out 2>/dev/null && break; sleep 0.2; done
sleep 1
"$BIN" connect --profile d/client.toml demo-1 iperf --listen 127.0.0.1:15202 >connect.out 2>connect.err & pids+=($!)
for _ in $(seq 50); do grep -q ready connect.out 2>/dev/null && break; sleep 0.2; done
rate() { iperf3 -J -c 127.0.0.1 -p "$1" -t "$SECS" $2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/2**20)'; }
for dir in "" "-R"; do
  name=$([ -z "$dir" ] && echo "client->device" || echo "device->client")
  direct=$(rate 15201 "$dir"); tunnel=$(rate 15202 "$dir")
  python3 -c "print(f'$name: direct {${direct}:.0f} MiB/s, through tether {${tunnel}:.0f} MiB/s, ratio {${tunnel}/${direct}:.1%}')"
done
