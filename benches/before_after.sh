#!/usr/bin/env bash
# Latency of two builds in one run: each in its own `tether dev`, alternating,
# `tether loadgen latency -n 2000` against it. Loopback only; stops what it starts.
#   benches/before_after.sh OLD/tether NEW/tether [ROUNDS]
set -u
old=$1 new=$2 rounds=${3:-2}
work=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for bin in "$old" "$new"; do
    rm -rf "$work/dev"
    "$bin" dev --dir "$work/dev" > "$work/dev.out" 2> "$work/dev.err" &
    pid=$!
    for _ in $(seq 1 600); do grep -q "is up" "$work/dev.out" 2>/dev/null && break; sleep 0.1; done
    sleep 3 # builds before the readiness fix printed "is up" before the agent attached
    echo "round $r $bin: $("$bin" loadgen latency --profile "$work/dev/client.toml" -n 2000 2>&1 | grep -A3 "client leg start" | tr "\n" " ")"
    kill -INT "$pid"; wait "$pid" 2>/dev/null; sleep 2
  done
done
rm -rf "$work"
