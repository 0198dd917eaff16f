#!/usr/bin/env bash
# Soak: `tether dev`, then `tether loadgen soak` (N sessions, one connection
# each echoing a verifiable chunk every few seconds) while the relays are
# killed with SIGKILL in turn (tether dev restarts them). Samples resident
# memory and open fds of every process each minute and reports the first
# sample after warm-up against the last. Fails when any byte is lost.
# Loopback only; stops only what it starts.
#
#   benches/soak.sh [--minutes 60] [--kill-every 300] [--sessions 1000] [--sample-every 60]
#                   [--bin target/release/tether]
#
# The figures land in $SOAK_OUT (default: a new temporary folder): soak.log,
# samples.csv (t, name, pid, rss_kib, fds), kills.log, dev.out/err.
set -u
minutes=60 kill_every=300 sessions=1000 sample_every=60 bin=target/release/tether
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --kill-every) kill_every=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    --sample-every) sample_every=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null
out=${SOAK_OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "soak: $sessions sessions for $minutes min, a relay killed every $kill_every s; output in $out"

"$bin" dev --dir "$out/dev" > "$out/dev.out" 2> "$out/dev.err" &
dev=$!
cleanup() {
  [ -n "${load:-}" ] && kill "$load" 2>/dev/null
  kill -INT "$dev" 2>/dev/null
  wait "$dev" 2>/dev/null
}
trap cleanup EXIT
for _ in $(seq 1 1200); do grep -q "is up" "$out/dev.out" 2>/dev/null && break; sleep 0.1; done
grep -q "is up" "$out/dev.out" || { echo "tether dev did not come up; see $out/dev.err" >&2; exit 1; }

# The pid of the part of `tether dev` started with this config (a child of $dev).
part() {
  for p in $(cat /proc/$dev/task/*/children 2>/dev/null); do
    tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -q -- "--config $1" && { echo "$p"; return; }
  done
}
sample() {
  local t=$1
  for name in hub relay-a relay-b agent; do
    local p
    p=$(part "$name.toml")
    [ -n "$p" ] || continue
    echo "$t,$name,$p,$(awk '/VmRSS/ {print $2}' /proc/$p/status),$(ls /proc/$p/fd | wc -l)" >> "$out/samples.csv"
  done
  for pair in "dev+echo:$dev" "loadgen:$load"; do
    local p=${pair#*:}
    [ -d /proc/$p ] || continue
    echo "$t,${pair%%:*},$p,$(awk '/VmRSS/ {print $2}' /proc/$p/status),$(ls /proc/$p/fd | wc -l)" >> "$out/samples.csv"
  done
}

"$bin" loadgen soak --profile "$out/dev/client.toml" --sessions "$sessions" --seconds $((minutes * 60)) \
  --report-secs 60 > "$out/soak.out" 2> "$out/soak.log" &
load=$!
# Wait for every session to be open before the clock starts.
for _ in $(seq 1 3000); do grep -q "soaking for" "$out/soak.log" 2>/dev/null && break; kill -0 $load 2>/dev/null || break; sleep 0.1; done
grep "sessions open" "$out/soak.log"
echo "t,name,pid,rss_kib,fds" > "$out/samples.csv"
start=$(date +%s)
next_kill=$((start + kill_every)) next_sample=$start victim=relay-a
while kill -0 "$load" 2>/dev/null; do
  now=$(date +%s)
  if [ "$now" -ge "$next_sample" ]; then sample $((now - start)); next_sample=$((next_sample + sample_every)); fi
  if [ "$now" -ge "$next_kill" ]; then
    p=$(part "$victim.toml")
    if [ -n "$p" ]; then
      kill -9 "$p" && echo "$((now - start)) s: kill -9 $victim (pid $p)" | tee -a "$out/kills.log"
    fi
    [ "$victim" = relay-a ] && victim=relay-b || victim=relay-a
    next_kill=$((next_kill + kill_every))
  fi
  sleep 1
done
wait "$load"; status=$?
load=

echo
cat "$out/soak.out"
echo
echo "resident memory (KiB) and open fds, first sample after warm-up (t=60 s) -> last under load:"
awk -F, 'NR > 1 && $1 >= 60 { if (!($2 in first)) first[$2] = $0; last[$2] = $0 }
  END { for (n in first) { split(first[n], a, ","); split(last[n], b, ",");
    printf "  %-9s rss %7d -> %7d KiB   fds %5d -> %5d   (pid %s -> %s)\n", n, a[4], b[4], a[5], b[5], a[3], b[3] } }' \
  "$out/samples.csv" | sort
grep -c "kill -9" "$out/kills.log" 2>/dev/null | sed 's/^/relay kills: /'
grep -E "restarted|restarting" "$out/dev.err" | tail -4
exit $status
