#!/usr/bin/env bash
# Decode latency and bytes per token for each --wire-dtype over a real,
# rate-limited link: rank 0 and rank 1 in two network namespaces joined by
# a veth pair, each end shaped with `tc ... tbf rate R burst 32kbit latency
# 50ms`, on a random-weight TinyLlama-1.1B-shaped f16 model (hidden 2048,
# 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32000; ~2.2 GB).
#
#   sudo bash benches/wire.sh [DIR]      (root: ip netns, tc; DIR default /tmp/tpi-wire)
#
# Env: TPI_WIRE_RATES ("100mbit 1gbit"), TPI_WIRE_ROUNDS (3), TPI_WIRE_LEN
# (32 decoded tokens), TPI_WIRE_THREADS (1 per rank), TPI_WIRE_SHAPE (extra
# make_model flags for a smaller model, e.g. "--layers 4").
#
# Rounds interleave the dtypes (the order rotates each round; the machine
# is shared), and every row gives the median and range over rounds, and
# the ratio to the f32 run of the same round (median and range of those). Bytes are what rank 0's socket
# to rank 1 carried, both directions, per forward (prompt prefill amortized,
# logits gather included). Everything made here is removed on exit:
# namespaces, the model, the slice cache.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/tpi-wire}
rates=${TPI_WIRE_RATES:-100mbit 1gbit}
rounds=${TPI_WIRE_ROUNDS:-3}
len=${TPI_WIRE_LEN:-32}
threads=${TPI_WIRE_THREADS:-1}
shape=${TPI_WIRE_SHAPE:-}
ns0=tpiw0-$$
ns1=tpiw1-$$
addr0=10.213.0.1
addr1=10.213.0.2
port=29517

[ "$(id -u)" = 0 ] || { echo "wire.sh: needs root (ip netns, tc)" >&2; exit 2; }
if [ -e "$dir" ]; then
  echo "wire.sh: $dir exists; give a fresh directory (it is deleted on exit)" >&2
  exit 2
fi

cleanup() {
  set +e
  [ -n "${w_pid:-}" ] && kill "$w_pid" 2>/dev/null
  ip netns del "$ns0" 2>/dev/null
  ip netns del "$ns1" 2>/dev/null
  [ -x "${bin:-}" ] && [ -d "$dir/cache" ] && "$bin" cache prune --cache-dir "$dir/cache" --max-size 0 >/dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

cargo build --release --quiet --bin tpi-run --example make_model
bin=$PWD/target/release/tpi-run
mkdir -p "$dir"
# shellcheck disable=SC2086
target/release/examples/make_model --out "$dir/model" --dtype f16 $shape >/dev/null

ip netns add "$ns0"
ip netns add "$ns1"
ip link add veth0 netns "$ns0" type veth peer name veth1 netns "$ns1"
ip -n "$ns0" addr add "$addr0/24" dev veth0
ip -n "$ns1" addr add "$addr1/24" dev veth1
for n in "$ns0" "$ns1"; do ip -n "$n" link set lo up; done
ip -n "$ns0" link set veth0 up
ip -n "$ns1" link set veth1 up

common=(--world-size 2 --master "$addr0:$port" --cache-dir "$dir/cache" --threads "$threads" --quiet)

# One session: rank 1 in ns1 (no model, no flag: it follows rank 0), rank 0
# in ns0; prints "ms_per_token allreduce_ms link_bytes_per_forward".
session() { # wire
  ip netns exec "$ns1" "$bin" --rank 1 "${common[@]}" --join-timeout 120 >/dev/null 2>"$dir/worker.log" &
  w_pid=$!
  ip netns exec "$ns0" "$bin" --rank 0 "${common[@]}" --model "$dir/model" --wire-dtype "$1" \
    --prompt-ids 1,2,3,4,5,6,7,8 --length "$len" --temperature 0 --ignore-eos --json 2>"$dir/rank0.log" \
    | python3 -c "
import json,sys
v=json.load(sys.stdin)
print('%.2f %.2f %.0f' % (v['ms_per_token'], v['allreduce_ms_per_token'], v['bytes_sent_per_token'] + v['bytes_received_per_token']))"
  wait "$w_pid" || { cat "$dir/worker.log" >&2; exit 1; }
  w_pid=
}

echo "# $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(uname -r)"
echo "# model: TinyLlama-1.1B shape f16 $shape; 8-token prompt, $len decoded tokens, $threads thread(s) per rank"
echo "# slicing (once)"
session f32 >/dev/null
dtypes=(f32 f16 q8_0)
for rate in $rates; do
  for pair in "$ns0 veth0" "$ns1 veth1"; do
    set -- $pair
    ip netns exec "$1" tc qdisc replace dev "$2" root tbf rate "$rate" burst 32kbit latency 50ms
  done
  declare -A ms=() ar=() bytes=()
  for r in $(seq 0 $((rounds - 1))); do
    for i in 0 1 2; do
      dt=${dtypes[$(((i + r) % 3))]}
      read -r m a b < <(session "$dt")
      ms[$dt]+="$m "; ar[$dt]+="$a "; bytes[$dt]=$b
      echo "  $rate round $((r + 1)) $dt: $m ms/token (allreduce $a), $b B/forward" >&2
    done
  done
  python3 - "$rate" "${ms[f32]}" "${ms[f16]}" "${ms[q8_0]}" "${ar[f32]}" "${ar[f16]}" "${ar[q8_0]}" \
    "${bytes[f32]}" "${bytes[f16]}" "${bytes[q8_0]}" <<'EOF'
import statistics as st, sys
rate = sys.argv[1]
ms = [list(map(float, a.split())) for a in sys.argv[2:5]]
ar = [list(map(float, a.split())) for a in sys.argv[5:8]]
by = [float(b) for b in sys.argv[8:11]]
ratio = lambda i: [x / y for x, y in zip(ms[i], ms[0])]
print(f"\n{rate}: | wire | ms/token, median (range) | ratio to f32 in the same round, median (range) "
      f"| waiting on rank 1, ms/token | link bytes/forward | vs f32 |")
print("|---|---|---|---|---|---|")
for i, (name, m, a, b) in enumerate(zip(["f32", "f16", "q8_0"], ms, ar, by)):
    r = ratio(i)
    print(f"| {name} | {st.median(m):.1f} ({min(m):.1f}-{max(m):.1f}) | {st.median(r):.2f} ({min(r):.2f}-{max(r):.2f}) "
          f"| {st.median(a):.1f} | {b:.0f} | {b/by[0]:.2f} |")
EOF
done
