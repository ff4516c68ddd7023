#!/usr/bin/env bash
# End-to-end token latency on a random-weight TinyLlama-1.1B-shaped model
# (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32000).
#
#   bash benches/e2e.sh [DIR]     (DIR: where models and slices go; default /tmp/tpi-bench)
#
# Prints ms/token for: one rank with 1 and 2 threads (f32, f16, bf16), two
# ranks x 1 thread over loopback (f32), and the memory window (resident vs
# W=2, page cache warm and O_DIRECT), with peak RSS, then the overlap bench. Needs ~15 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/tpi-bench}
mkdir -p "$dir"
cargo build --release --quiet --bin tpi-run --example make_model
bin=target/release/tpi-run
for dt in f32 f16 bf16; do
  [ -f "$dir/tl-$dt/model.safetensors" ] || target/release/examples/make_model --out "$dir/tl-$dt" --dtype "$dt"
done
len=${TPI_BENCH_LEN:-32}
run() { # label, args...
  local label=$1; shift
  "$bin" --prompt-ids 1,2,3,4,5,6,7,8 --length "$len" --temperature 0 --ignore-eos --json --quiet --cache-dir "$dir/cache" "$@" \
    | python3 -c "
import json,sys
v=json.load(sys.stdin)
print('%-44s %9.1f ms/token  allreduce %6.2f  io-wait %7.2f  read %7.1f MB/token  peak RSS %7.1f MiB' % ('$label', v['ms_per_token'], v.get('allreduce_ms_per_token',0), v.get('io_wait_ms_per_token',0), v.get('bytes_read_per_token',0)/1e6, v['peak_rss_bytes']/2**20))"
}
echo "== one rank"
for dt in f32 f16 bf16; do
  for t in 1 2; do run "$dt, 1 rank x $t threads" --model "$dir/tl-$dt" --threads "$t"; done
done
echo "== tensor parallel, loopback (local mode)"
run "f32, 2 ranks x 1 thread" --model "$dir/tl-f32" --world-size 2 --threads 1
run "f16, 2 ranks x 1 thread" --model "$dir/tl-f16" --world-size 2 --threads 1
echo "== memory window (f32, 2 threads)"
run "f32, 1 rank, resident (mmap)" --model "$dir/tl-f32" --threads 2 --no-memory-window
run "f32, 1 rank, W=2, mapped, page cache warm" --model "$dir/tl-f32" --threads 2 --memory-window 2 --mapped-io
run "f32, 1 rank, W=2, pread, page cache warm" --model "$dir/tl-f32" --threads 2 --memory-window 2 --buffered-io
run "f32, 1 rank, W=2, O_DIRECT (cold)" --model "$dir/tl-f32" --threads 2 --memory-window 2 --direct-io
run "f32, 2 ranks, W=2, O_DIRECT (cold)" --model "$dir/tl-f32" --threads 1 --world-size 2 --memory-window 2 --direct-io
run "f32, 4 ranks, W=2, O_DIRECT (cold)" --model "$dir/tl-f32" --threads 1 --world-size 4 --memory-window 2 --direct-io
echo "== overlap: windowed decode vs I/O-only and compute-only, interleaved in one process (f32, W=2)"
slice=$(ls -S "$dir"/cache/*/rank-0-of-1.slice | head -n1)  # largest = the f32 one
cargo bench --quiet --bench overlap -- "$slice" 6 mapped
cargo bench --quiet --bench overlap -- "$slice" 6
cargo bench --quiet --bench overlap -- "$slice" 6 direct tokens=2
