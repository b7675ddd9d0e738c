#!/usr/bin/env bash
# Start what the tests need and cannot find: the Docker engine, a local base image, Azurite.
# Idempotent: whatever already answers is left alone. Usage: test-setup.sh [docker|azurite|all]
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
if [[ "$what" == all || "$what" == docker ]]; then
  scripts/docker-up.sh
  scripts/base-image.sh
fi
if [[ "$what" == all || "$what" == azurite ]]; then
  scripts/azurite-up.sh
fi
