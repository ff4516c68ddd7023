#!/usr/bin/env bash
# Regenerates tests/fixtures/*/llamacpp.json with llama.cpp itself (see
# tools/llamacpp_oracle.py). Not part of the default test run.
#   bash tools/llamacpp_oracle.sh [DIR] [FIXTURE ...]   (DIR default /tmp/tpi-llamacpp)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/tpi-llamacpp}
shift || true
. tools/llamacpp_env.sh "$dir"
"$py" tools/llamacpp_oracle.py "$llama_dir" "$@"
