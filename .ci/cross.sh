#!/usr/bin/env bash
# Cross-target checks for edge devices (docs/edge.md):
#   - static aarch64 musl binary (Pi OS 64-bit, Android): NEON kernels vs scalar
#     under two qemu CPU models (cortex-a72: no dotprod, the smull path;
#     cortex-a76: dotprod, the sdot path), oracle tests and the bundled demo under
#     qemu, a mixed x86-64 + aarch64 cluster;
#   - armv7 (32-bit Pi OS): cross-build, kernel tests and the demo under qemu-arm.
# Idempotent; on a fresh machine it installs what it needs (apt, rustup targets).
# Ends with "cross: N passed, M failed" and exits non-zero if any check failed.
# Set CROSS_SKIP_ARMV7=1 to skip the armv7 phase.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

MUSL=aarch64-unknown-linux-musl
ARMV7=armv7-unknown-linux-gnueabihf
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$PWD/$TARGET_DIR" ;; esac
HOST_BIN="$TARGET_DIR/release/tpi-run"
MUSL_BIN="$TARGET_DIR/$MUSL/release/tpi-run"
ARMV7_BIN="$TARGET_DIR/$ARMV7/release/tpi-run"
GQA=tests/fixtures/llama-gqa-bf16
STORIES=tests/fixtures/stories260K

PASSED=0
FAILED=0
FAILURES=()
T0=$SECONDS
PHASE_NAME=""
PHASE_START=$SECONDS
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

phase_end() {
    if [ -n "$PHASE_NAME" ]; then
        echo "-- $PHASE_NAME: $((SECONDS - PHASE_START))s"
    fi
}
phase() {
    phase_end
    PHASE_NAME="$1"
    PHASE_START=$SECONDS
    echo "== cross: $1"
}
# check NAME CMD...: runs CMD, counts it as passed or failed, never exits.
check() {
    local name="$1"
    shift
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "ok: $name"
    else
        FAILED=$((FAILED + 1))
        FAILURES+=("$name")
        echo "FAILED: $name"
    fi
}
# json_field FILE EXPR: prints a Python expression over the JSON object `d` in FILE.
json_field() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
# reference_ids FIXTURE INDEX: greedy ids of prompts[INDEX], comma-separated.
reference_ids() {
    json_field "$1/reference.json" "','.join(map(str, d['prompts'][$2]['greedy']['ids']))"
}
prompt_ids() {
    json_field "$1/reference.json" "','.join(map(str, d['prompts'][$2]['ids']))"
}
generated_ids() {
    json_field "$1" "','.join(map(str, d['generated_ids'][:$2]))"
}
# same LABEL WANT GOT
same() {
    if [ "$2" = "$3" ]; then return 0; fi
    echo "  $1: want $2" >&2
    echo "  $1: got  $3" >&2
    return 1
}

# ---------------------------------------------------------------- setup
phase "setup (apt, rustup targets)"
need_pkgs=()
command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v qemu-arm-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v arm-linux-gnueabihf-gcc >/dev/null || need_pkgs+=(gcc-arm-linux-gnueabihf)
[ -e /usr/arm-linux-gnueabihf/lib/libc.a ] || need_pkgs+=(libc6-dev-armhf-cross)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "apt-get install ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${need_pkgs[@]}" | sort -u) >/dev/null
fi
installed_targets="$(rustup target list --installed)"
for t in "$MUSL" "$ARMV7"; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

# ---------------------------------------------------------------- aarch64 musl
phase "aarch64 musl: release build (static, rust-lld)"
check "build $MUSL release" cargo build --release --target "$MUSL" --bin tpi-run

# qemu-user reads the CPU model from QEMU_CPU (its default, "max", has
# dotprod); the env reaches it through cargo's runner as well.
# Cortex-A72 (Pi 4): base ARMv8-A, no dotprod. Cortex-A76 (Pi 5): dotprod.
phase "aarch64 musl: --version, bundled demo and quantized decode under qemu"
version_ok() {
    local cpu="$1" kernel="$2" v
    v="$(QEMU_CPU="$cpu" qemu-aarch64-static "$MUSL_BIN" --version)" || return 1
    echo "  QEMU_CPU=$cpu: $v"
    same "--version" "tpi-run $(grep -m1 '^version' Cargo.toml | cut -d'"' -f2) (target $MUSL, kernel $kernel)" "$v"
}
check "$MUSL --version on cortex-a72 shows the musl triple and neon" version_ok cortex-a72 neon
check "$MUSL --version on cortex-a76 shows neon-dotprod" version_ok cortex-a76 neon-dotprod
demo_ok() {
    # No -L: a static binary needs no aarch64 sysroot.
    QEMU_CPU=cortex-a72 qemu-aarch64-static "$MUSL_BIN" --prompt "Once upon a time" \
        --temperature 0 --length 32 --json >"$TMP/demo.json" || return 1
    same kernel neon "$(json_field "$TMP/demo.json" "d['kernel']")" &&
        same generated_ids "$(reference_ids "$STORIES" 0)" "$(generated_ids "$TMP/demo.json" 32)"
}
check "$MUSL bundled demo on cortex-a72: kernel neon, greedy ids = reference" demo_ok
# The smull and sdot paths share their loop and f32 order and differ only in
# the exact integer dot of a block, so quantized decode gives the same ids.
quant_same_ok() {
    local q cpu ids out
    ids="$(prompt_ids "$GQA" 1)"
    for q in q8_0 q4_0; do
        for cpu in cortex-a72 cortex-a76; do
            QEMU_CPU="$cpu" qemu-aarch64-static "$MUSL_BIN" --model "$GQA" \
                --cache-dir "$TMP/cache-$q-$cpu" --quantize "$q" --prompt-ids "$ids" \
                --length 24 --temperature 0 --ignore-eos --json >"$TMP/$q-$cpu.json" \
                2>"$TMP/$q-$cpu.err" || { tail -5 "$TMP/$q-$cpu.err" >&2; return 1; }
        done
        out="$(generated_ids "$TMP/$q-cortex-a72.json" 24)"
        echo "  $q: $out"
        same "$q kernel (cortex-a76)" neon-dotprod "$(json_field "$TMP/$q-cortex-a76.json" "d['kernel']")" &&
            same "$q generated_ids cortex-a76 vs cortex-a72" "$out" \
                "$(generated_ids "$TMP/$q-cortex-a76.json" 24)" || return 1
    done
}
check "$MUSL --quantize q8_0/q4_0: sdot (cortex-a76) ids = smull (cortex-a72) ids" quant_same_ok

# kernel_tests CPU DOTPROD: the kernel tests on qemu's CPU model CPU, which has
# dotprod (1) or not (0). The test pinned to TPI_EXPECT_DOTPROD proves which
# path was detected; the quantized GEMV tests run every available one (the
# smull path always, sdot where the CPU has dotprod) and print their names.
kernel_tests() {
    local cpu="$1" dotprod="$2" log="$TMP/kernels-$1.log"
    if ! QEMU_CPU="$cpu" TPI_EXPECT_DOTPROD="$dotprod" \
        cargo test -p tpi-kernels --target "$MUSL" -- --show-output >"$log" 2>&1; then
        # libtest's failures section (or cargo's errors): the failed tests' output.
        { sed -n '/^failures:$/,/^test result/p' "$log" | head -40; grep -E "^error" "$log"; } >&2
        return 1
    fi
    grep -E "^(aarch64:|TPI_EXPECT_DOTPROD:|ragged shapes:)" "$log" | sed 's/^/  /'
    grep -q "^test detected_dotprod_matches_tpi_expect_dotprod \.\.\. ok$" "$log" || {
        echo "  the test pinned to TPI_EXPECT_DOTPROD did not run" >&2
        return 1
    }
}

phase "aarch64 musl: kernel tests under qemu cortex-a72 (NEON smull vs scalar)"
check "$MUSL cargo test -p tpi-kernels, QEMU_CPU=cortex-a72: neon detected" \
    kernel_tests cortex-a72 0

phase "aarch64 musl: kernel tests under qemu cortex-a76 (NEON sdot and smull vs scalar)"
check "$MUSL cargo test -p tpi-kernels, QEMU_CPU=cortex-a76: neon-dotprod detected" \
    kernel_tests cortex-a76 1

phase "aarch64 musl: oracle tests under qemu"
check "$MUSL cargo test --test integration oracle::" \
    cargo test --target "$MUSL" --test integration oracle::

# ---------------------------------------------------------------- mixed cluster
phase "host release build"
check "build host release" cargo build --release --bin tpi-run

phase "mixed cluster: x86-64 rank 0 + qemu aarch64 rank 1"
cluster_ok() {
    local port ids want rc0=0 rc1=0 p0 p1
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    ids="$(prompt_ids "$GQA" 1)"
    want="$(reference_ids "$GQA" 1)"
    "$HOST_BIN" --rank 0 --world-size 2 --master "127.0.0.1:$port" --model "$GQA" \
        --cache-dir "$TMP/cache0" --prompt-ids "$ids" --length 32 --temperature 0 \
        --ignore-eos --json --join-timeout 120 >"$TMP/rank0.json" 2>"$TMP/rank0.err" &
    p0=$!
    PIDS+=("$p0")
    qemu-aarch64-static "$MUSL_BIN" --rank 1 --world-size 2 --master "127.0.0.1:$port" \
        --cache-dir "$TMP/cache1" --join-timeout 120 >"$TMP/rank1.out" 2>"$TMP/rank1.err" &
    p1=$!
    PIDS+=("$p1")
    wait "$p0" || rc0=$?
    wait "$p1" || rc1=$?
    if [ "$rc0" -ne 0 ] || [ "$rc1" -ne 0 ]; then
        echo "  rank 0 exit $rc0, rank 1 exit $rc1" >&2
        sed 's/^/  rank0: /' "$TMP/rank0.err" | tail -5 >&2
        sed 's/^/  rank1: /' "$TMP/rank1.err" | tail -5 >&2
        return 1
    fi
    ls "$TMP"/cache1/*/*.slice >/dev/null 2>&1 ||
        { echo "  rank 1 cached no slice in $TMP/cache1" >&2; return 1; }
    same world_size 2 "$(json_field "$TMP/rank0.json" "d['world_size']")" &&
        same generated_ids "$want" "$(generated_ids "$TMP/rank0.json" 32)"
}
check "mixed x86-64 + aarch64 cluster: greedy ids = oracle" cluster_ok

# ---------------------------------------------------------------- armv7
if [ "${CROSS_SKIP_ARMV7:-0}" = 1 ]; then
    echo "armv7: skipped (CROSS_SKIP_ARMV7=1)"
else
    phase "armv7: release build"
    check "build $ARMV7 release" cargo build --release --target "$ARMV7" --bin tpi-run

    phase "armv7: --version and bundled demo under qemu-arm"
    armv7_demo_ok() {
        # No -L: the binary is static (crt-static in .cargo/config.toml).
        local run=(qemu-arm-static "$ARMV7_BIN")
        echo "  $("${run[@]}" --version)"
        "${run[@]}" --prompt "Once upon a time" --temperature 0 --length 32 --json \
            >"$TMP/armv7.json" || return 1
        # No NEON backend on 32-bit ARM: the kernels run scalar there.
        same kernel scalar "$(json_field "$TMP/armv7.json" "d['kernel']")" &&
            same generated_ids "$(reference_ids "$STORIES" 0)" "$(generated_ids "$TMP/armv7.json" 32)"
    }
    check "$ARMV7 bundled demo: greedy ids = reference" armv7_demo_ok

    phase "armv7: kernel tests under qemu-arm"
    check "$ARMV7 cargo test -p tpi-kernels" cargo test -p tpi-kernels --target "$ARMV7"
fi

phase_end
echo "cross: total $((SECONDS - T0))s"
for f in "${FAILURES[@]}"; do echo "failed: $f"; done
echo "cross: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
