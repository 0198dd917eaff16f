#!/usr/bin/env bash
# Throughput of one tunnelled connection through real `tether` processes
# (two relays, agent, client) against direct loopback TCP, in the same run.
# Needs iperf3 (apt-get install -y iperf3). Loopback only; stops what it starts.
set -euo pipefail
source "$(dirname "$0")/lib/dev.sh"
dev_init
dev_up
connect_iperf
for dir in "" "-R"; do
  name=$([ -z "$dir" ] && echo "client->device" || echo "device->client")
  direct=$(rate 15201 "$dir"); tunnel=$(rate 15202 "$dir")
  python3 -c "print(f'$name: direct {${direct}:.0f} MiB/s, through tether {${tunnel}:.0f} MiB/s, ratio {${tunnel}/${direct}:.1%}')"
done
