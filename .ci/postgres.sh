# Sourced: installs PostgreSQL from Debian's packages if missing, starts a throwaway cluster on
# 127.0.0.1 as the `postgres` user (password auth), and exports DATABASE_URL and, for the
# secrets the tests seal in it, IOTAUTH_TEST_MASTER_KEY_FILE (a fresh key beside the cluster;
# the tests pass it as IOTAUTH_MASTER_KEY_FILE to what they run on PostgreSQL).
# Stop it with `pg_stop` (also run on the sourcing shell's exit).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pg_bin" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
pg_dir=$(mktemp -d /tmp/iotauth-pg.XXXXXX)
pg_port=${PG_PORT:-54329}
echo iotauth-test > "$pg_dir/pwfile"
chown -R postgres:postgres "$pg_dir"
runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --pwfile="$pg_dir/pwfile" \
    -A scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$pg_dir/initdb.log" 2>&1
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=200" start >/dev/null
export DATABASE_URL="postgres://postgres:iotauth-test@127.0.0.1:$pg_port/postgres"
(umask 077 && openssl rand -hex 32 > "$pg_dir/master.key")
export IOTAUTH_TEST_MASTER_KEY_FILE="$pg_dir/master.key"
pg_stop() {
    [ -d "$pg_dir/data" ] && runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1
    rm -rf "$pg_dir"
}
trap pg_stop EXIT
