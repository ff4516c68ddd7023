#!/usr/bin/env bash
# Regenerates tests/fixtures/gguf_run/ (GGUF files made by llama.cpp's own
# tools and llamacpp.json, what llama.cpp computes on them; see
# tools/gguf_run_fixture.py). Not part of the default test run.
#   bash tools/gguf_run_fixture.sh [DIR]   (DIR default /tmp/tpi-llamacpp)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/tpi-llamacpp}
. tools/llamacpp_env.sh "$dir"
"$py" tools/gguf_run_fixture.py "$llama_dir"
