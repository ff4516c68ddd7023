#!/usr/bin/env bash
# tpi next to llama.cpp on this machine, same model shape, same minutes.
#
#   bash benches/llamacpp.sh [DIR] [ROUNDS]   (DIR default /tmp/tpi-bench, ROUNDS default 3)
#   PREFILL_ONLY=1 bash benches/llamacpp.sh ... skips the decode rows
#   GGUF_ONLY=1 bash benches/llamacpp.sh ...    only the GGUF-file rows
#
# llama.cpp comes from PyPI (llama-cpp-python's source release, built for
# this CPU: GGML_NATIVE=ON; tools/llamacpp_env.sh) into DIR on first use,
# which takes ~15 minutes on 2 cores. Both engines decode a random-weight
# TinyLlama-1.1B-shaped model (hidden 2048, 22 layers, 32 heads, 4 KV heads,
# MLP 5632, vocab 32000) in f32 and f16: tpi from the HF safetensors that
# `examples/make_model` writes, llama.cpp from a GGUF of the same shape
# written here. Each pair runs back to back, so the ratio is what counts:
# the machine's speed moves between minutes. ms/token is the mean over 32
# single-token decode steps after an 8-token prompt, for both.
#
# Quantized rows: llama.cpp's quantizer makes Q8_0 and Q4_0 files from the
# f16 GGUF with the types `tpi-run --quantize` stores (layer matrices in
# the type, output Q8_0, token embedding f16); tpi cuts its own from the
# f16 safetensors. Prefill rows (f32, f16, Q8_0, Q4_0) time a 64- and a
# 128-token prompt (tpi:
# time to first token with --length 1; llama.cpp: one eval of the prompt,
# batch 512), as tokens/s.
#
# GGUF rows: llama.cpp's quantizer makes Q4_K_M and Q6_K files from the
# f16 GGUF with its default mixture (what users download: Q4_K_M keeps
# some attn_v / ffn_down and the output in Q6_K), and both engines run
# that same file (`tpi-run --model FILE.gguf`): decode at 1 and 2 threads,
# prefill of 64- and 128-token prompts at 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/tpi-bench}
rounds=${2:-3}
. tools/llamacpp_env.sh "$dir"

cargo build --release --quiet --bin tpi-run --example make_model
bin=target/release/tpi-run
for dt in f32 f16; do
  [ -f "$dir/tl-$dt/model.safetensors" ] || target/release/examples/make_model --out "$dir/tl-$dt" --dtype "$dt"
  [ -f "$dir/tl-$dt.gguf" ] || "$py" - "$dir/tl-$dt.gguf" "$dt" <<'PY'
# A llama GGUF of the TinyLlama-1.1B shape with random weights.
import sys, numpy as np, gguf
out, dt = sys.argv[1], sys.argv[2]
D, L, H, KV, F, V = 2048, 22, 32, 4, 5632, 32000
hd = D // H
npdt = np.float32 if dt == "f32" else np.float16
rng = np.random.default_rng(0)
w = gguf.GGUFWriter(out, "llama")
w.add_context_length(2048); w.add_embedding_length(D); w.add_block_count(L)
w.add_feed_forward_length(F); w.add_head_count(H); w.add_head_count_kv(KV)
w.add_rope_dimension_count(hd); w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
w.add_file_type(0 if dt == "f32" else 1)
toks = [b"<unk>", b"<s>", b"</s>"] + [("<0x%02X>" % i).encode() for i in range(256)]
toks += [("t%d" % i).encode() for i in range(V - len(toks))]
w.add_tokenizer_model("llama"); w.add_token_list(toks)
w.add_token_scores([0.0] * V); w.add_token_types([3, 3, 3] + [6] * 256 + [1] * (V - 259))
w.add_bos_token_id(1); w.add_eos_token_id(2)
def mat(r, c): return (rng.standard_normal((r, c), dtype=np.float32) * 0.02).astype(npdt)
def vec(n): return np.ones(n, dtype=np.float32)
w.add_tensor("token_embd.weight", mat(V, D))
for l in range(L):
    p = "blk.%d." % l
    w.add_tensor(p + "attn_norm.weight", vec(D))
    w.add_tensor(p + "attn_q.weight", mat(D, D))
    w.add_tensor(p + "attn_k.weight", mat(KV * hd, D))
    w.add_tensor(p + "attn_v.weight", mat(KV * hd, D))
    w.add_tensor(p + "attn_output.weight", mat(D, D))
    w.add_tensor(p + "ffn_norm.weight", vec(D))
    w.add_tensor(p + "ffn_gate.weight", mat(F, D))
    w.add_tensor(p + "ffn_up.weight", mat(F, D))
    w.add_tensor(p + "ffn_down.weight", mat(D, F))
w.add_tensor("output_norm.weight", vec(D))
w.add_tensor("output.weight", mat(V, D))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
done

for q in q8_0 q4_0 q4_k_m q6_k; do
  [ -f "$dir/tl-$q.gguf" ] || "$py" - "$dir/tl-f16.gguf" "$dir/tl-$q.gguf" "$q" <<'PY'
import sys, llama_cpp
src, dst, q = sys.argv[1:]
p = llama_cpp.llama_model_quantize_default_params()
# LLAMA_FTYPE_MOSTLY_Q8_0 / _Q4_0 / _Q4_K_M / _Q6_K
p.ftype = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q6_k": 18}[q]
if q in ("q8_0", "q4_0"):
    p.output_tensor_type = 8              # GGML_TYPE_Q8_0, as tpi's lm_head
    p.token_embedding_type = 1            # GGML_TYPE_F16, as tpi keeps it
assert llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p) == 0
PY
done

llamacpp() { # gguf, threads, [prompt tokens] -> mean ms/token, or prompt tokens/s
  "$py" - "$@" <<'PY' 2>/dev/null
import sys, time, llama_cpp
path, threads = sys.argv[1], int(sys.argv[2])
prompt = int(sys.argv[3]) if len(sys.argv) > 3 else 0
m = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
                    n_ctx=256, n_batch=512, verbose=False)
if prompt:
    m.eval([1, 2])  # warm-up, then a fresh prompt
    m.reset()
    t0 = time.perf_counter(); m.eval([3 + i for i in range(prompt)])
    print("%.1f" % (prompt / (time.perf_counter() - t0)))
    sys.exit()
n = 32
m.eval([1, 2, 3, 4, 5, 6, 7, 8])
total = 0.0
for i in range(n):
    t0 = time.perf_counter(); m.eval([9 + i]); total += time.perf_counter() - t0
print("%.1f" % (1e3 * total / n))
PY
}
tpi() { # model dir, threads, extra args... -> ms/token
  local model=$1 threads=$2; shift 2
  "$bin" --prompt-ids 1,2,3,4,5,6,7,8 --length 32 --temperature 0 --ignore-eos --json --quiet \
    --cache-dir "$dir/cache" --model "$model" --threads "$threads" "$@" \
    | python3 -c "import json,sys; print('%.1f' % json.load(sys.stdin)['ms_per_token'])"
}
tpi_prefill() { # model dir, threads, prompt tokens, extra args... -> prompt tokens/s
  local model=$1 threads=$2 n=$3; shift 3
  "$bin" --prompt-ids "$(seq -s, 3 $((n + 2)))" --length 1 --temperature 0 --json --quiet \
    --cache-dir "$dir/cache" --model "$model" --threads "$threads" "$@" \
    | python3 -c "import json,sys; print('%.1f' % ($n * 1e3 / json.load(sys.stdin)['ttft_ms']))"
}
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
quant_args() { case $1 in f16 | f32) ;; *) echo "--quantize $1" ;; esac; }

"$py" -c "import llama_cpp; print('llama.cpp', llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"
echo "tpi kernel: $("$bin" --prompt-ids 1 --length 1 --json --quiet | python3 -c "import json,sys; print(json.load(sys.stdin)['kernel'])")"
printf '%-6s %-34s %10s %10s %7s %9s\n' round "decode ms/token" tpi llama.cpp ratio "tpi/f16"
[ -n "${PREFILL_ONLY:-}${GGUF_ONLY:-}" ] && decode_rounds=0 || decode_rounds=$rounds
[ -n "${GGUF_ONLY:-}" ] && prefill_rounds=0 || prefill_rounds=$rounds
for r in $(seq "$decode_rounds"); do
  for t in 1 2; do
    base=
    for ty in f16 q8_0 q4_0; do
      gguf="$dir/tl-$ty.gguf"; [ "$ty" = f16 ] && gguf="$dir/tl-f16.gguf"
      # shellcheck disable=SC2046
      a=$(tpi "$dir/tl-f16" "$t" $(quant_args "$ty"))
      b=$(llamacpp "$gguf" "$t")
      base=${base:-$a}
      printf '%-6s %-34s %10s %10s %7s %9s\n' "$r" "$ty, 1 rank x $t threads" "$a" "$b" "$(ratio "$a" "$b")" "$(ratio "$a" "$base")"
    done
  done
  # tensor parallel: 2 ranks x 1 thread over loopback against llama.cpp with 2 threads
  a=$(tpi "$dir/tl-f32" 1 --world-size 2)
  b=$(llamacpp "$dir/tl-f32.gguf" 2)
  printf '%-6s %-34s %10s %10s %7s\n' "$r" "f32, 2 ranks x 1 thread (TP)" "$a" "$b" "$(ratio "$a" "$b")"
  a=$(tpi "$dir/tl-f16" 1 --world-size 2 --quantize q4_0)
  b=$(llamacpp "$dir/tl-q4_0.gguf" 2)
  printf '%-6s %-34s %10s %10s %7s\n' "$r" "q4_0, 2 ranks x 1 thread (TP)" "$a" "$b" "$(ratio "$a" "$b")"
done
printf '%-6s %-34s %10s %10s %7s\n' round "prefill tokens/s, 2 threads" tpi llama.cpp ratio
for r in $(seq "$prefill_rounds"); do
  for n in 64 128; do
    for ty in f32 f16 q8_0 q4_0; do
      gguf="$dir/tl-$ty.gguf" model="$dir/tl-f16"
      [ "$ty" = f32 ] && model="$dir/tl-f32"
      # shellcheck disable=SC2046
      a=$(tpi_prefill "$model" 2 "$n" $(quant_args "$ty"))
      b=$(llamacpp "$gguf" 2 "$n")
      printf '%-6s %-34s %10s %10s %7s\n' "$r" "$ty, $n-token prompt" "$a" "$b" "$(ratio "$a" "$b")"
    done
  done
done
printf '%-6s %-34s %10s %10s %7s\n' round "GGUF file, both engines" tpi llama.cpp ratio
[ -n "${PREFILL_ONLY:-}" ] && gguf_rounds=0 || gguf_rounds=$rounds
for r in $(seq "$gguf_rounds"); do
  for ty in q4_k_m q6_k; do
    gguf="$dir/tl-$ty.gguf"
    for t in 1 2; do
      a=$(tpi "$gguf" "$t")
      b=$(llamacpp "$gguf" "$t")
      printf '%-6s %-34s %10s %10s %7s\n' "$r" "$ty decode ms/token, $t threads" "$a" "$b" "$(ratio "$a" "$b")"
    done
    for n in 64 128; do
      a=$(tpi_prefill "$gguf" 2 "$n")
      b=$(llamacpp "$gguf" 2 "$n")
      printf '%-6s %-34s %10s %10s %7s\n' "$r" "$ty prefill tok/s, $n tokens" "$a" "$b" "$(ratio "$a" "$b")"
    done
  done
done
