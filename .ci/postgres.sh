#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for tests, on 127.0.0.1 and a free port.
#
#   .ci/postgres.sh start DIR [WATCH_PID]
#       initdb in DIR (created if missing; as root, its parent must be open
#       to other users, e.g. /tmp), start the server, print
#       OPAMP_TEST_DATABASE_URL=postgresql://... on stdout. With WATCH_PID,
#       a watcher stops the cluster and deletes DIR once that process exits.
#   .ci/postgres.sh stop DIR
#       stop the cluster and delete DIR.
#   .ci/postgres.sh down DIR / up DIR
#       stop the server, keeping DIR (fault tests: "the database restarts");
#       start it again on the same port.
#
# PostgreSQL refuses to run as root: as root, the cluster runs as the system
# user opamp-pg (created if missing). Binaries come from $OPAMP_PG_BINDIR if
# set, else /usr/lib/postgresql/<newest>/bin, else pg_config; with OPAMP_PG_INSTALL=1 and
# none found, Debian's `postgresql` package is installed first.
set -euo pipefail
# runuser and useradd live in sbin, which a non-login root shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

action="${1:-}"
dir="${2:-}"
if [[ -z "$action" || -z "$dir" ]]; then
  echo "usage: $0 start DIR [WATCH_PID] | stop DIR | down DIR | up DIR" >&2
  exit 2
fi

find_bindir() {
  if [[ -n "${OPAMP_PG_BINDIR:-}" ]]; then
    [[ -x "$OPAMP_PG_BINDIR/initdb" ]] && echo "$OPAMP_PG_BINDIR"
    return 0
  fi
  local newest
  newest="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -n "$newest" && -x "$newest/initdb" ]]; then
    echo "$newest"
  elif command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir
  fi
}

as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u opamp-pg -- "$@"
  else
    "$@"
  fi
}

bindir="$(find_bindir)"
if [[ -z "$bindir" && "$action" == start && "${OPAMP_PG_INSTALL:-}" == 1 && "$(id -u)" == 0 ]]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >/dev/null
  bindir="$(find_bindir)"
fi
if [[ -z "$bindir" ]]; then
  echo "postgres.sh: no PostgreSQL found (looked in /usr/lib/postgresql/*/bin and pg_config)" >&2
  exit 3
fi

case "$action" in
  start)
    mkdir -p "$dir"
    if [[ "$(id -u)" == 0 ]]; then
      if ! id opamp-pg >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin opamp-pg
      fi
      chown opamp-pg "$dir"
      if ! runuser -u opamp-pg -- test -w "$dir"; then
        echo "postgres.sh: opamp-pg cannot reach $dir (use a directory directly under /tmp)" >&2
        exit 1
      fi
    fi
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    started=""
    for _ in $(seq 1 20); do
      port=$((20000 + RANDOM % 40000))
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        continue # in use
      fi
      if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir \
            -c max_connections=300 -c fsync=off -c synchronous_commit=off \
            -c full_page_writes=off" >/dev/null; then
        started="$port"
        break
      fi
    done
    if [[ -z "$started" ]]; then
      echo "postgres.sh: the server did not start; its log:" >&2
      cat "$dir/server.log" >&2 || true
      exit 1
    fi
    echo "$started" >"$dir/port"
    if [[ -n "${3:-}" ]]; then
      watch_pid="$3"
      setsid bash -c '
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        "$0" stop "$2"' "$0" "$watch_pid" "$dir" </dev/null >/dev/null 2>&1 &
    fi
    echo "OPAMP_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:$started/postgres"
    ;;
  stop)
    if [[ -d "$dir/data" ]]; then
      as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  down)
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    ;;
  up)
    port="$(cat "$dir/port")"
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir \
          -c max_connections=300 -c fsync=off -c synchronous_commit=off \
          -c full_page_writes=off" >/dev/null
    ;;
  *)
    echo "usage: $0 start DIR [WATCH_PID] | stop DIR | down DIR | up DIR" >&2
    exit 2
    ;;
esac
