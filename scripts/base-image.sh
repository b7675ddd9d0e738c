#!/usr/bin/env bash
# Build the local images that stand in for pulled ones (no registry is reachable here):
#   airflow-mlops/base:bookworm     Debian minbase + python3 + venv: the scoring images' base
#   airflow-mlops/haproxy:bookworm  Debian minbase + haproxy: the Docker target's gateway
# Each is `debootstrap --variant=minbase` into a folder, then `docker import`. Cached by tag:
# an image whose tag exists is not rebuilt. Usage: base-image.sh [base|haproxy|all]
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-}"   # empty: debootstrap's default mirror (or the host's apt proxy settings)

build() {
  local tag="$1" include="$2"
  if docker image inspect "$tag" >/dev/null 2>&1; then echo "base-image: $tag exists"; return; fi
  if ! command -v debootstrap >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  fi
  local dir
  dir="$(mktemp -d /tmp/mlops-rootfs.XXXXXX)"
  echo "base-image: debootstrap $suite ($include) -> $tag"
  # shellcheck disable=SC2086
  debootstrap --variant=minbase --include="$include" "$suite" "$dir" $mirror > "$dir.log" 2>&1 || {
    tail -30 "$dir.log" >&2; rm -rf "$dir" "$dir.log"; exit 1; }
  rm -f "$dir.log"
  # Smaller image: package caches and docs are not needed at run time.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
    "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
  tar -C "$dir" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$tag" >/dev/null
  rm -rf "$dir"
  echo "base-image: built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
}

if [[ "$what" == all || "$what" == base ]]; then
  build airflow-mlops/base:bookworm python3,python3-venv,ca-certificates
fi
if [[ "$what" == all || "$what" == haproxy ]]; then
  build airflow-mlops/haproxy:bookworm haproxy,ca-certificates
fi
