#!/usr/bin/env bash
# Echo RTT per hop: tether's path has three processes (the specialist's
# `tether connect`, the relay, the agent), rathole's two (server, client).
# In one run, alternating, ROUNDS times: direct loopback, rathole with TLS,
# rathole with TLS behind one plain forwarding hop (socat, standing for a
# third process on the path), and tether over TCP and over QUIC legs. Each
# is the peer kit's `probe rtt` (20 000 round trips of 64 bytes after 1 000
# warm-up) to the kit's `probe echo-server`.
# Needs what ../shared/bench-peers/ needs (rathole 0.5.0 and its probe,
# built as its README says; openssl) and socat (apt-get install -y socat).
# Loopback only (127.0.0.1, ports 15400-15412 and tether dev's fixed ports);
# stops what it starts, by pid.
#   benches/hop_rtt.sh                 (3 rounds, target/release/tether)
#   ROUNDS=5 BIN=path/to/tether RATHOLE=... PROBE=... benches/hop_rtt.sh
set -euo pipefail
ROUNDS=${ROUNDS:-3}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tether}
RATHOLE=${RATHOLE:-/tmp/peers/bin/rathole}
PROBE=${PROBE:-/tmp/peers/probe-target/release/probe}
for b in "$BIN" "$RATHOLE" "$PROBE" socat openssl; do
  command -v "$b" >/dev/null || { echo "hop_rtt.sh: $b not found" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

# rathole's TLS identity, as the peer kit makes it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 3 -subj /CN=peer-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 3 -extfile ext 2>/dev/null
openssl pkcs12 -export -out id.pfx -inkey srv.key -in srv.pem -passout pass:1234 2>/dev/null
printf '[server]\nbind_addr = "127.0.0.1:15410"\n[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "id.pfx"\npkcs12_password = "1234"\n[server.services.echo]\ntoken = "hop"\nbind_addr = "127.0.0.1:15411"\n' >s.toml
printf '[client]\nremote_addr = "127.0.0.1:15410"\n[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "ca.pem"\nhostname = "localhost"\n[client.services.echo]\ntoken = "hop"\nlocal_addr = "127.0.0.1:15401"\n' >c.toml

timeout 3600 "$PROBE" echo-server 127.0.0.1:15401 --max-secs 3500 >/dev/null 2>&1 &
pids+=($!)
rtt() { timeout 120 "$PROBE" rtt "$1" --n 20000 --size 64 2>&1 | grep -o 'p50_us=[0-9.]*\|p99_us=[0-9.]*' | tr '\n' ' '; }
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; done; wait "$@" 2>/dev/null || true; }

rathole_round() {
  local ps=()
  timeout 600 "$RATHOLE" -s s.toml >rs.log 2>&1 & ps+=($!)
  sleep 0.5
  timeout 600 "$RATHOLE" -c c.toml >rc.log 2>&1 & ps+=($!)
  sleep 1.5
  printf '%-21s%s\n' rathole-tls "$(rtt 127.0.0.1:15411)"
  timeout 600 socat TCP-LISTEN:15412,bind=127.0.0.1,reuseaddr,fork TCP:127.0.0.1:15411 & ps+=($!)
  sleep 0.5
  printf '%-21s%s\n' "rathole-tls + socat" "$(rtt 127.0.0.1:15412)"
  printf '%-21s%s\n' direct "$(rtt 127.0.0.1:15401)"
  stop "${ps[@]}"
}

tether_round() {
  local ps=() d
  d=$(mktemp -d "$work/t.XXXX")
  TETHER_TRANSPORT=$1 "$BIN" dev init --dir "$d/d" --service probe=127.0.0.1:15401 >/dev/null 2>&1
  "$BIN" dev up --dir "$d/d" >"$d/dev.out" 2>"$d/dev.err" & ps+=($!)
  for _ in $(seq 100); do grep -q "is up" "$d/dev.out" 2>/dev/null && break; sleep 0.2; done
  "$BIN" connect --profile "$d/d/client.toml" demo-1 probe --listen 127.0.0.1:15402 >"$d/c.out" 2>"$d/c.err" & ps+=($!)
  for _ in $(seq 50); do grep -q ready "$d/c.out" 2>/dev/null && break; sleep 0.2; done
  sleep 1
  printf '%-21s%s\n' "tether $1" "$(rtt 127.0.0.1:15402)"
  stop "${ps[@]}"
}

for _ in $(seq "$ROUNDS"); do
  rathole_round
  tether_round tcp
  tether_round quic
done
