#!/usr/bin/env bash
# Start Azurite (a real Azure Blob Storage server, from npm) on 127.0.0.1:10000 unless a
# working one answers. Installs it into .cache/azurite on first use. Data lives in
# .cache/azurite-data. An Azurite that answers but cannot store a blob (say, its data folder
# was deleted under it) is stopped and replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${AZURITE_BLOB_PORT:-10000}"
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
# Write and read back one blob with the well-known development account (needs the venv).
stores() {
  [[ -x .venv/bin/python ]] || return 0  # no SDK to check with: trust the port
  AZURITE_PORT="$port" .venv/bin/python - <<'PY' >/dev/null 2>&1
import os
from azure.storage.blob import BlobServiceClient
conn = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    f"BlobEndpoint=http://127.0.0.1:{os.environ['AZURITE_PORT']}/devstoreaccount1;"
)
container = BlobServiceClient.from_connection_string(conn).get_container_client("azurite-up-probe")
if not container.exists():
    container.create_container()
container.upload_blob("probe", b"ok", overwrite=True)
assert container.download_blob("probe").readall() == b"ok"
PY
}
if answers; then
  if stores; then echo "azurite: already answering on 127.0.0.1:$port"; exit 0; fi
  echo "azurite: 127.0.0.1:$port answers but cannot store a blob; restarting it" >&2
  pids=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
  [[ -n "$pids" ]] && kill $pids 2>/dev/null || true
  for _ in $(seq 1 20); do answers || break; sleep 0.5; done
fi
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
  if answers && stores; then echo "azurite: answering on 127.0.0.1:$port"; exit 0; fi
  sleep 0.5
done
echo "azurite: did not start; see .cache/azurite.log" >&2
tail -20 .cache/azurite.log >&2 || true
exit 1
