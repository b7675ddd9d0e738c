#!/usr/bin/env bash
# Make a Docker engine answer (and `docker compose` work): install Debian's docker.io and
# compose when missing, start dockerd in the background, wait until it answers (bounded).
# Idempotent: an engine that already answers is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
updated=0
apt_install() {
  if [[ $updated == 0 ]]; then apt-get update -q >/dev/null; updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
  echo "docker-up: installing Debian's docker.io" >&2
  apt_install docker.io
fi
# `docker compose` (plugin) or the standalone `docker-compose`; Debian bookworm ships the latter.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  echo "docker-up: installing a compose tool" >&2
  apt_install docker-compose-plugin 2>/dev/null || apt_install docker-compose
fi
if docker info >/dev/null 2>&1; then echo "docker-up: engine already answering"; exit 0; fi
if ! pgrep -x dockerd >/dev/null; then
  nohup dockerd > .cache/dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then echo "docker-up: engine answering"; exit 0; fi
  sleep 1
done
echo "docker-up: dockerd did not answer within 60 s; see .cache/dockerd.log" >&2
tail -20 .cache/dockerd.log >&2 || true
exit 1
