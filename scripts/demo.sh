#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: a synthetic pool through the demo recipe on local Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/curate demo "$@"
