#!/usr/bin/env python3
"""Writes kernels/tests/fixtures/quant.json: ggml Q8_0 / Q4_0 blocks made by
an implementation independent of tpi, for `kernels/tests/quant.rs`.

Oracle: the `gguf` Python package, version 0.19.0 (`pip install gguf==0.19.0`),
whose `gguf.quants` numpy quantizers are written to be bit-exact with ggml's
reference quantizers (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref` in
ggml-quants.c). The tests do not run this script; its output is committed.

    python3 tools/quant_fixture.py > kernels/tests/fixtures/quant.json

Each row: `n` (a multiple of 32), and as lowercase hex of little-endian bytes:
`x` (n f32), `q8_0` / `q4_0` (the ggml blocks, 34 / 18 bytes per 32 values),
`q8_0_deq` / `q4_0_deq` (n f32, gguf's dequantization of those blocks).
"""

import importlib.metadata
import json
import sys

import numpy as np
from gguf.quants import GGMLQuantizationType as T, dequantize, quantize

GGUF_VERSION = "0.19.0"


def rows():
    rng = np.random.default_rng(20261207)
    # Q8_0 rounding ties: amax 127 gives d = 1 and id = 1 exactly, so x * id
    # is x and every k + 0.5 is a tie (round half away from zero).
    ties8 = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 63.5, -63.5, 0.0, -0.0]
    ties8 += [float(k) + 0.5 for k in range(-10, 9)]
    # Q4_0: the signed max -8 gives d = 1, id = 1; x + 8.5 truncates, and
    # +8 (opposite sign of the max) clamps to 15. Then a positive max (d < 0).
    ties4 = [-8.0, 7.5, 8.0, -7.5, 0.5, -0.5, 0.0, -0.0] + [k * 0.5 for k in range(-8, 16)]
    ties4b = [8.0, -8.0, -7.5, 7.5, 0.25, -0.25, 3.5, -3.5] + [k * 0.5 - 4 for k in range(24)]
    yield "ties", np.array(ties8 + ties4 + ties4b, dtype=np.float32)
    yield "zeros", np.zeros(32, dtype=np.float32)
    # A zero block between non-zero ones; a block of one non-zero value.
    one = np.zeros(32, dtype=np.float32)
    one[17] = -3.0
    yield "zero_block_inside", np.concatenate(
        [rng.standard_normal(32, dtype=np.float32), np.zeros(32, np.float32), one])
    # Large (d near the top of f16) and tiny (d an f16 subnormal or 0) scales.
    big = rng.uniform(-6.0e4, 6.0e4, 64).astype(np.float32)
    tiny = (rng.standard_normal(64) * 1e-5).astype(np.float32)
    tinier = (rng.standard_normal(32) * 1e-8).astype(np.float32)
    yield "large_and_tiny", np.concatenate([big, tiny, tinier])
    # Equal |max| with both signs: the first one wins in Q4_0.
    eq = rng.standard_normal(32).astype(np.float32) * 0.1
    eq[3], eq[20] = 2.0, -2.0
    eq2 = rng.standard_normal(32).astype(np.float32) * 0.1
    eq2[3], eq2[20] = -2.0, 2.0
    yield "equal_abs_max", np.concatenate([eq, eq2])
    for n in (160, 288, 1024):
        yield f"normal_{n}", rng.standard_normal(n, dtype=np.float32)


def hexle(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype).tobytes().hex()


def main():
    have = importlib.metadata.version("gguf")
    if have != GGUF_VERSION:
        sys.exit(f"gguf {have} installed; this fixture is made with gguf {GGUF_VERSION}")
    out = {"gguf_version": GGUF_VERSION, "rows": []}
    for name, x in rows():
        assert x.dtype == np.float32 and x.ndim == 1 and len(x) % 32 == 0, name
        row = {"name": name, "n": len(x), "x": hexle(x, "<f4")}
        for key, qt in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0)):
            q = quantize(x.reshape(1, -1), qt)
            row[key] = q.tobytes().hex()
            row[key + "_deq"] = hexle(dequantize(q, qt).reshape(-1), "<f4")
        out["rows"].append(row)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
