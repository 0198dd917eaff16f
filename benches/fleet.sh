#!/usr/bin/env bash
# Fleet delivery benchmarks through real `tether` processes (`tether dev`:
# hub, two relays, agent), in one run:
#  1. the tunnel's own throughput toward the device (iperf3 through `tether
#     connect`) against an artifact download through a relay (`tether agent
#     fetch`, rate cap off, every byte hashed and verified), same setup;
#  2. N simulated agents (`tether loadgen fetch`) each fetching a 1 MiB
#     artifact through relay-a from the one hub: total time, and the CPU the
#     hub and relay-a spent.
# Needs iperf3. Loopback only (tether dev's fixed ports); stops what it starts.
set -euo pipefail
source "$(dirname "$0")/lib/dev.sh"
SIZE_MIB=${SIZE_MIB:-256}
AGENTS=${AGENTS:-1000}
dev_init
echo "max_download_bytes_per_sec = 0" >> d/agent.toml   # [repo] is the file's last table
dev_up
P=d/client.toml
pid_of() { sed -n 's/^pids: //p' dev.out | tr ',' '\n' | awk -v n="$1" '$1==n {print $2}'; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

connect_iperf
tunnel=$(rate 15202)

head -c $((SIZE_MIB << 20)) /dev/urandom > big.bin
"$BIN" repo publish --profile $P big 1 big.bin >/dev/null
t0=$(date +%s.%N)
"$BIN" agent --config d/agent.toml fetch big@1 > fetch.json
t1=$(date +%s.%N)
python3 - "$tunnel" "$t0" "$t1" "$SIZE_MIB" <<'PY'
import json, sys
tunnel, t0, t1, size = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
f = json.load(open("fetch.json"))["fetched"]
rate = f["length"] / 2**20 / (t1 - t0)
print(f"tunnel toward the device (iperf3): {tunnel:.0f} MiB/s; {size} MiB artifact download through a relay "
      f"(metadata, ranges, SHA-256): {t1 - t0:.2f} s, {rate:.0f} MiB/s, {rate / tunnel:.0%} of the tunnel; "
      f"{f['fetched']} bytes fetched, {f['resumes']} resumes")
PY

head -c $((1 << 20)) /dev/urandom > small.bin
"$BIN" repo publish --profile $P small 1 small.bin >/dev/null
read -r sha len < <("$BIN" repo list --profile $P --json | python3 -c '
import json,sys
for t in json.load(sys.stdin)["targets"]:
    if t["name"] == "small": print(t["sha256"], t["length"])')
hub=$(pid_of hub); relay=$(pid_of relay-a)
h0=$(cpu "$hub"); r0=$(cpu "$relay")
"$BIN" loadgen fetch --pki d/pki --control 127.0.0.1:17001 --sha256 "$sha" --length "$len" --agents "$AGENTS"
h1=$(cpu "$hub"); r1=$(cpu "$relay")
python3 -c "print(f'CPU during the $AGENTS fetches: hub {($h1-$h0)/$tck:.2f} s, relay-a {($r1-$r0)/$tck:.2f} s')"
