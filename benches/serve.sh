#!/usr/bin/env bash
# `tpi-run serve` on a random-weight TinyLlama-1.1B-shaped model (hidden
# 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32000): time to
# first token of a conversation's turn 1 and turn 2, requests per minute,
# and the server's cost per token against the CLI in the same minutes.
#
#   bash benches/serve.sh [DIR] [ROUNDS]   (DIR default /tmp/tpi-bench, ROUNDS default 2)
#   DTYPE=f32|f16|bf16   stored dtype of the made model (default f16)
#   QUANT=q8_0|q4_0      adds --quantize to the server and the CLI
#   WORLD=2              2 ranks x 1 thread over loopback (default 1 rank x 2 threads)
#   THREADS=N  REQUESTS=N (per throughput row, default 8)  PAIRS=N (server/CLI pairs a round, default 3)
#   KEEP=1               keep the model this script made in DIR/tl-DTYPE
#
# `examples/make_model` writes no tokenizer, and `serve` takes text, so the
# model is served from DIR/serve-DTYPE: links to DIR/tl-DTYPE's files, a
# word-level tokenizer.json over the 32000 ids (`<unk>`, `<s>`, `</s>`,
# `<|user|>`, `<|assistant|>`, `<|system|>`, then `w6`..`w31999`, split on
# whitespace, so any generated text tokenizes back to the same ids) and a
# tokenizer_config.json with a Zephyr-like chat template
# (`<|role|> content </s> ... <|assistant|>`). Every request is greedy
# with llama.cpp's `ignore_eos`, so each generates exactly max_tokens.
#
# Rows, each round:
#  - turns: /v1/chat/completions, streamed. Turn 1 is a 95-word user
#    message (98 prompt tokens rendered); turn 2 adds turn 1's answer and
#    a 16-word message, and reuses the KV cache (usage.prompt_tokens_details
#    .cached_tokens); "turn 2, cold" sends the same turn 2 again after an
#    unrelated request has replaced the cache. TTFT = request sent to the
#    first event whose delta has text.
#  - requests/minute: /v1/completions, a 32-token prompt (a different first
#    word each request, so nothing is cached), max_tokens 32, not streamed;
#    REQUESTS back to back from one client, then the same number from 4
#    concurrent clients (the server queues them, first come first served).
#  - server vs CLI: /v1/completions streamed against `tpi-run --prompt ...
#    --json` on the same 32-token prompt and 64 tokens, alternating which
#    runs first. Server ms/token = (last token event - first token event) /
#    (tokens - 1) at the client; CLI = its ms_per_token (the same span,
#    measured inside the engine). The ratio's excess over 1 is the server's
#    cost per token (queue, JSON, SSE write, the socket, the client) plus the
#    machine's drift between the two runs. "conn us" is the CPU time of the
#    server's connection thread (tpi-http: receive the piece, JSON, write,
#    look for a hang-up) per token, "client us" this Python client's, both
#    between the first and last token events (schedstat, process_time).
#
# The slice cache (DIR/serve-cache), the served directory and the server log
# are removed on exit; so is DIR/tl-DTYPE when this script made it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/tpi-bench}
rounds=${2:-2}
dtype=${DTYPE:-f16}
world=${WORLD:-1}
threads=${THREADS:-$((world == 1 ? 2 : 1))}
requests=${REQUESTS:-8}
pairs=${PAIRS:-3}
mkdir -p "$dir"

cargo build --release --quiet --bin tpi-run --example make_model
bin=target/release/tpi-run
src="$dir/tl-$dtype" model="$dir/serve-$dtype" cache="$dir/serve-cache" log="$dir/serve.log"
made=
if [ ! -f "$src/model.safetensors" ]; then
  target/release/examples/make_model --out "$src" --dtype "$dtype" >/dev/null
  made=1
fi
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$model" "$cache" "$log"
  if [ -n "$made" ] && [ -z "${KEEP:-}" ]; then rm -rf "$src"; fi
}
trap cleanup EXIT

mkdir -p "$model"
for f in config.json generation_config.json model.safetensors; do ln -sf "$(realpath "$src/$f")" "$model/$f"; done
python3 - "$model" <<'PY'
# A word-level tokenizer over the model's 32000 ids and a chat template.
import json, os, sys
out, V = sys.argv[1], 32000
words = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
words += ["w%d" % i for i in range(len(words), V)]
special = [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True} for i, w in enumerate(words[:3])]
tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
       "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
       "post_processor": None, "decoder": None,
       "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)},
                 "unk_token": "<unk>"}}
with open(os.path.join(out, "tokenizer.json"), "w") as f:
    json.dump(tok, f)
tmpl = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {{ eos_token }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}")
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "chat_template": tmpl}, f)
PY

args=(--model "$model" --cache-dir "$cache" --threads "$threads" --world-size "$world")
[ -n "${QUANT:-}" ] && args+=(--quantize "$QUANT")
"$bin" serve "${args[@]}" --listen 127.0.0.1:0 2>"$log" &
server=$!
port=
for _ in $(seq 600); do
  port=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$log" | head -n1)
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
[ -n "$port" ] || { echo "the server did not start: $log" >&2; exit 1; }

client() { # port, command, args... (python3 standard library only)
  python3 - "$port" "$@" <<'PY'
import http.client, json, os, sys, threading, time
port, cmd, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

def post(path, body, on_token=None):
    """A stream: the seconds from sending to each event with text, the text
    and the usage (`on_token(i)` called at each such event); otherwise the
    answer's JSON and its seconds."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        sys.exit("%s: HTTP %d %s" % (path, r.status, r.read()[:300]))
    if not body.get("stream"):
        d = json.loads(r.read())
        d["seconds"] = time.perf_counter() - t0
        c.close()
        return d
    times, text, usage = [], [], None
    while True:
        line = r.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        usage = ev.get("usage") or usage
        for ch in ev.get("choices", []):
            piece = ch.get("text") or (ch.get("delta") or {}).get("content") or ""
            if piece:
                times.append(time.perf_counter() - t0)
                text.append(piece)
                if on_token:
                    on_token(len(times) - 1)
    c.close()
    return {"times": times, "text": "".join(text), "usage": usage}

def words(first, n):
    return " ".join("w%d" % (first + i) for i in range(n))

greedy = {"temperature": 0, "ignore_eos": True}
if cmd == "turns":  # round, tokens -> one line per turn
    rnd, n = int(args[0]), int(args[1])
    chat = lambda msgs: post("/v1/chat/completions", dict(greedy, messages=msgs, max_tokens=n,
                             stream=True, stream_options={"include_usage": True}))
    def show(label, a):
        u = a["usage"]
        assert u["completion_tokens"] == n and len(a["times"]) == n, (u, len(a["times"]))
        print("%-6s %-30s %10.0f %8d %8d" % (rnd, label, 1e3 * a["times"][0], u["prompt_tokens"],
                                             u["prompt_tokens_details"]["cached_tokens"]))
    turn1 = [{"role": "user", "content": words(1000 + 200 * rnd, 95)}]
    a = chat(turn1)
    show("turn 1", a)
    turn2 = turn1 + [{"role": "assistant", "content": a["text"].strip()},
                     {"role": "user", "content": words(1100 + 200 * rnd, 16)}]
    warm = chat(turn2)
    show("turn 2", warm)
    post("/v1/completions", dict(greedy, prompt="w7 w8", max_tokens=1))
    cold = chat(turn2)
    show("turn 2, cold", cold)
    print("%-6s %-30s %10.3f" % (rnd, "turn 2 / cold", warm["times"][0] / cold["times"][0]))
elif cmd == "rpm":  # requests, clients, first word -> requests/min, mean seconds a request
    n, clients, first = int(args[0]), int(args[1]), int(args[2])
    todo, lock, secs = list(range(n)), threading.Lock(), []
    def run():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            d = post("/v1/completions", dict(greedy, prompt=words(first + 100 * i, 32), max_tokens=32))
            u = d["usage"]
            assert u["completion_tokens"] == 32 and u["prompt_tokens_details"]["cached_tokens"] == 0, u
            secs.append(d["seconds"])
    t0 = time.perf_counter()
    ts = [threading.Thread(target=run) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    assert len(secs) == n
    print("%.1f %.1f" % (60 * n / wall, sum(secs) / n))
elif cmd == "stream":  # server pid, prompt, tokens -> ms/token between the first and last
    # token events; CPU us/token of the server's connection thread and of this client
    pid, prompt, n = args[0], args[1], int(args[2])
    def http_cpu():  # ns on CPU of each of the server's connection threads
        ns = {}
        for t in os.listdir("/proc/%s/task" % pid):
            try:
                with open("/proc/%s/task/%s/comm" % (pid, t)) as f:
                    if f.read().strip() != "tpi-http":
                        continue
                with open("/proc/%s/task/%s/schedstat" % (pid, t)) as f:
                    ns[t] = int(f.read().split()[0])
            except OSError:
                pass
        return ns
    # CPU from the first to the last but one token: after the last the
    # server answers at once and its thread may be gone.
    cpu, last = {}, n - 2
    def mark(i):
        if i in (0, last):
            cpu[i] = (http_cpu(), time.process_time())
    a = post("/v1/completions", dict(greedy, prompt=prompt, max_tokens=n, stream=True), mark)
    t = a["times"]
    assert len(t) == n, len(t)
    (h0, c0), (h1, c1) = cpu[0], cpu[last]
    # Ours is the thread that ran meanwhile (another may be closing a connection).
    conn = max([h1[k] - h0[k] for k in h0.keys() & h1.keys()] or [float("nan")])
    print("%.2f %.0f %.0f" % (1e3 * (t[-1] - t[0]) / (n - 1), conn / 1e3 / last,
                              1e6 * (c1 - c0) / last))
PY
}
cli_ms() { # prompt, tokens -> the CLI's ms/token
  "$bin" "${args[@]}" --prompt "$1" --length "$2" --temperature 0 --ignore-eos --json --quiet \
    | python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['ms_per_token'])"
}
ratio() { python3 -c "print('%.3f' % ($1 / $2))"; }

echo "model: $dtype${QUANT:+ --quantize $QUANT}, $world rank(s) x $threads thread(s), $(nproc) cores"
client stream "$server" "w7 w8 w9" 4 >/dev/null # warm-up: weights paged in
cli_ms "w7 w8 w9" 4 >/dev/null
prompt=$(python3 -c "print(' '.join('w%d' % i for i in range(100, 132)))")
ratios=() shares=()
for r in $(seq "$rounds"); do
  printf '%-6s %-30s %10s %8s %8s\n' round "chat turn (32 tokens each)" "TTFT ms" prompt cached
  client turns "$r" 32
  printf '%-6s %-30s %10s %10s\n' round "32+32 tokens, $requests requests" "req/min" "s/request"
  out=$(client rpm "$requests" 1 $((20000 + 1000 * r)))
  read -r rpm secs <<<"$out"
  printf '%-6s %-30s %10s %10s\n' "$r" "1 client, back to back" "$rpm" "$secs"
  out=$(client rpm "$requests" 4 $((20050 + 1000 * r)))
  read -r rpm4 secs4 <<<"$out"
  printf '%-6s %-30s %10s %10s\n' "$r" "4 concurrent clients" "$rpm4" "$secs4"
  printf '%-6s %-30s %10s %10s\n' "$r" "4 clients / 1 client" "$(ratio "$rpm4" "$rpm")" "$(ratio "$secs4" "$secs")"
  printf '%-6s %-30s %10s %10s %7s %9s %9s\n' round "ms/token, 64 tokens" server CLI ratio "conn us" "client us"
  for p in $(seq "$pairs"); do
    if [ $((p % 2)) = 1 ]; then
      out=$(client stream "$server" "$prompt" 64) b=$(cli_ms "$prompt" 64)
    else
      b=$(cli_ms "$prompt" 64) out=$(client stream "$server" "$prompt" 64)
    fi
    read -r a conn own <<<"$out"
    ratios+=("$(ratio "$a" "$b")") shares+=("$(python3 -c "print($conn / 1e3 / $a)")")
    printf '%-6s %-30s %10s %10s %7s %9s %9s\n' "$r" "pair $p" "$a" "$b" "${ratios[-1]}" "$conn" "$own"
  done
done
python3 -c "
import statistics, sys
v = list(map(float, sys.argv[1:]))
r, s = sorted(v[:len(v) // 2]), v[len(v) // 2:]
print('server/CLI ms/token over %d pairs: median %.3f, range %.3f-%.3f' % (len(r), statistics.median(r), r[0], r[-1]))
print('server connection thread CPU: median %.3f%% of a token (max %.3f%%)' % (100 * statistics.median(s), 100 * max(s)))
" "${ratios[@]}" "${shares[@]}"
