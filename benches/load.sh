#!/usr/bin/env bash
# Load on `iotauth serve` over loopback, one run, baseline included (issue 7):
#   - wrk, 64 keep-alive connections, LOAD_SECONDS (default 20) each, against
#       GET  /healthz             the same server doing no authentication (the baseline),
#       POST /hooks/emqx/authn    logins of DEVICES (default 1000) active devices, in turn;
#     on the embedded SQLite store and, when DATABASE_URL is set, on PostgreSQL: uncached
#     (--cache-ttl-secs 0) and with the default 600 s cache (kept coherent by the event log);
#   - then the broker's connects/s with and without authentication (benches/connect_rate.rs).
# wrk and the server share this machine's cores: the figures are a floor, not a ceiling.
# Usage: bash benches/load.sh            (installs wrk from Debian if it is missing)
# It fails when any request errs or any login is not allowed. CI runs it short:
# LOAD_SECONDS=2 DEVICES=50 bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${LOAD_SECONDS:-20}
DEVICES=${DEVICES:-1000}
CONNECTIONS=64

if ! command -v wrk >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get install -y wrk >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
fi
cargo build --release --all-features --quiet
BIN=$PWD/target/release/iotauth
WORK=$(mktemp -d)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# A fleet in a store: DEVICES registered devices and each one's EMQX authn body.
fleet() {  # fleet STORE_URL BODIES
  local pk
  pk=$(IOTAUTH_STORE=$1 "$BIN" product create | sed -n 's/.*"productKey":"\([^"]*\)".*/\1/p')
  IOTAUTH_STORE=$1 "$BIN" device register-batch "$pk" "$WORK/names" 2>/dev/null > "$WORK/devices.jsonl"
  python3 - "$WORK/devices.jsonl" "$2" <<'PY'
import hashlib, hmac, json, sys
with open(sys.argv[1]) as devices, open(sys.argv[2], "w") as out:
    for line in devices:
        d = json.loads(line)
        pk, dn, secret = d["productKey"], d["deviceName"], d["deviceSecret"]
        client, ts = f"{pk}.{dn}", "1710000000000"
        content = f"clientId{client}deviceName{dn}productKey{pk}timestamp{ts}"
        password = hmac.new(secret.encode(), content.encode(), hashlib.sha256).hexdigest()
        body = {"clientid": f"{client}|securemode=2,signmethod=hmacsha256,timestamp={ts}|",
                "username": f"{dn}&{pk}", "password": password}
        out.write(json.dumps(body, separators=(",", ":")) + "\n")
PY
}
seq -f "load-%05g" 1 "$DEVICES" > "$WORK/names"
export IOTAUTH_STORE="sqlite://$WORK/load.db"
fleet "$IOTAUTH_STORE" "$WORK/bodies"
if [ -n "${DATABASE_URL:-}" ]; then
  # The key .ci/postgres.sh made for its cluster.
  export IOTAUTH_MASTER_KEY_FILE=${IOTAUTH_TEST_MASTER_KEY_FILE:?}
  fleet "$DATABASE_URL" "$WORK/pg-bodies"
  unset IOTAUTH_MASTER_KEY_FILE
fi

PORT=18080
start() {  # start STORE_URL [serve options...]
  local store=$1; shift
  IOTAUTH_STORE=$store RUST_LOG=warn "$BIN" serve --http 127.0.0.1:$PORT "$@" &
  SERVER=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "the server did not start" >&2; exit 1
}
stop() { kill "$SERVER"; wait "$SERVER" || true; SERVER=; }
run() {  # run NAME PATH wrk-script-args...
  local name=$1 path=$2; shift 2
  local line
  line=$(wrk -t2 -c$CONNECTIONS -d"${SECONDS_EACH}s" -s benches/load.lua \
    "http://127.0.0.1:$PORT$path" -- "$@" | grep '^RESULT')
  printf '%-34s %s\n' "$name" "${line#RESULT }"
  case $line in
    *" errors=0 bad=0") ;;
    *) echo "$name: some requests failed or were not allowed" >&2; exit 1 ;;
  esac
}
warm() {  # warm BODIES: one login of every device (makes them active; later logins only read)
  while read -r body; do
    curl -fs -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$PORT/hooks/emqx/authn" | grep -q '"allow"'
  done < "$1"
}

echo "wrk -t2 -c$CONNECTIONS -d${SECONDS_EACH}s on $(nproc) cores, $DEVICES devices, server and wrk on one machine"
start "$IOTAUTH_STORE" --cache-ttl-secs 0
warm "$WORK/bodies"
run "healthz (baseline)" /healthz healthz
run "emqx authn, sqlite, uncached" /hooks/emqx/authn hook "$WORK/bodies"
stop
start "$IOTAUTH_STORE" --cache-ttl-secs 600
run "emqx authn, sqlite + 600 s cache" /hooks/emqx/authn hook "$WORK/bodies"
stop
if [ -n "${DATABASE_URL:-}" ]; then
  export IOTAUTH_MASTER_KEY_FILE=$IOTAUTH_TEST_MASTER_KEY_FILE
  start "$DATABASE_URL" --cache-ttl-secs 0
  warm "$WORK/pg-bodies"
  run "emqx authn, postgres, uncached" /hooks/emqx/authn hook "$WORK/pg-bodies"
  stop
  start "$DATABASE_URL" --cache-ttl-secs 600
  run "emqx authn, postgres + 600 s cache" /hooks/emqx/authn hook "$WORK/pg-bodies"
  stop
  unset IOTAUTH_MASTER_KEY_FILE
else
  echo "postgres skipped: DATABASE_URL is not set (source .ci/postgres.sh)"
fi
echo
echo "broker connects/s (benches/connect_rate.rs):"
IOTAUTH_CONNECT_SECONDS=$SECONDS_EACH cargo bench --all-features --bench connect_rate --quiet 2>/dev/null \
  | grep -E 'connect_rate/|publish_rate/|concurrent|publishing'
