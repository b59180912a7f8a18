#!/usr/bin/env bash
# A Docker daemon and a Compose for `make test-compose`: when the machine has neither, Debian's docker.io
# and docker-compose are installed, and a daemon that does not answer is started as root in the
# background (its log: /var/log/imagequeue-dockerd.log). A machine with its own Docker is left as it is.
set -euo pipefail

has_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || ! has_compose; then
  if [ "$(id -u)" != 0 ]; then
    echo "Docker or Compose is missing, and installing them needs root" >&2
    exit 1
  fi
  echo "installing docker.io and docker-compose"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io docker-compose \
    >/tmp/imagequeue-docker-install.log 2>&1 || { tail -20 /tmp/imagequeue-docker-install.log >&2; exit 1; }
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "the Docker daemon does not answer, and starting it needs root" >&2
    exit 1
  fi
  echo "starting dockerd"
  # --ip: ports published on the default bridge bind to loopback only (the check's own networks say
  # the same for theirs).
  setsid dockerd --ip=127.0.0.1 >/var/log/imagequeue-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/imagequeue-dockerd.log >&2; exit 1; }
fi
docker version --format 'Docker {{.Server.Version}} (client {{.Client.Version}})'
docker compose version 2>/dev/null || docker-compose version --short | sed 's/^/docker-compose /'
