#!/usr/bin/env bash
# Start Azurite (a real Azure Blob Storage server, from npm) on 127.0.0.1:10000 unless one answers.
# Installs it into .cache/azurite on first use. Data lives in .cache/azurite-data.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${AZURITE_BLOB_PORT:-10000}"
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
if answers; then echo "azurite: already answering on 127.0.0.1:$port"; exit 0; fi
if ! command -v npm >/dev/null; then
  echo "azurite: npm is missing; installing Debian's nodejs and npm" >&2
  apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null
fi
bin=.cache/azurite/node_modules/.bin/azurite-blob
if [[ ! -x "$bin" ]]; then
  mkdir -p .cache/azurite
  npm install --silent --no-audit --no-fund --prefix .cache/azurite azurite@3 >/dev/null
fi
mkdir -p .cache/azurite-data
nohup "$bin" --blobHost 127.0.0.1 --blobPort "$port" --location .cache/azurite-data \
  --disableTelemetry --skipApiVersionCheck --loose > .cache/azurite.log 2>&1 &
for _ in $(seq 1 60); do
  if answers; then echo "azurite: answering on 127.0.0.1:$port"; exit 0; fi
  sleep 0.5
done
echo "azurite: did not start; see .cache/azurite.log" >&2
tail -20 .cache/azurite.log >&2 || true
exit 1
