#!/usr/bin/env python3
"""Writes kernels/tests/fixtures/kquant.json: ggml Q4_K / Q6_K / Q8_K
super-blocks made by implementations independent of tpi, for
`kernels/tests/kquant.rs`.

Oracles:
- the `gguf` Python package, version 0.19.0 (`pip install gguf==0.19.0`),
  for dequantization: its numpy `Q4_K` / `Q6_K` dequantizers (it has no
  K-quant quantizer);
- ggml itself, for quantization and the dot products: `libggml-base.so`
  (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref`,
  `quantize_row_q8_K_ref`, `dequantize_row_q4_K`, `dequantize_row_q6_K`)
  and `libggml-cpu.so` (`ggml_vec_dot_q4_K_q8_K_generic`,
  `ggml_vec_dot_q6_K_q8_K_generic`) of llama-cpp-python 0.3.36, as
  `tools/llamacpp_env.sh DIR` builds it (its `venv-llamacpp`). The two
  dequantizers are checked against each other here, bit for bit.

The tests do not run this script; its output is committed.

    /tmp/kq-venv/bin/python tools/kquant_fixture.py \\
        DIR/venv-llamacpp/lib/python3.11/site-packages/llama_cpp/lib \\
        > kernels/tests/fixtures/kquant.json

`rows`: `n` (a multiple of 256) and as lowercase hex of little-endian bytes
`x` (n f32) and ggml's `q4_k` / `q6_k` / `q8_k` blocks of it (144 / 210 /
292 bytes per 256 values; an all-zero Q8_K super-block's `bsums`, which
ggml leaves unwritten, are zero); `dot_q4_k` / `dot_q6_k`: ggml's generic
dot product (f32 hex) of this row's Q4_K / Q6_K blocks with the next
row's Q8_K blocks of the same length (the last row: with its own).
`blocks`: hand-made hostile super-blocks, `type` ("q4_k" / "q6_k"),
`bytes` (hex) and `deq` (256 f32 hex, gguf's dequantization).
"""

import ctypes
import importlib.metadata
import json
import os
import sys

import numpy as np
from gguf.quants import GGMLQuantizationType as T, dequantize

GGUF_VERSION = "0.19.0"
QK_K = 256
SIZES = {"q4_k": 144, "q6_k": 210, "q8_k": 292}


class Ggml:
    def __init__(self, libdir):
        mode = ctypes.RTLD_GLOBAL
        self.base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"), mode=mode)
        self.cpu = ctypes.CDLL(os.path.join(libdir, "libggml-cpu.so"), mode=mode)
        # Fills the f16 -> f32 table the CPU backend's dot products read.
        self.cpu.ggml_cpu_init.restype = None
        self.cpu.ggml_cpu_init()
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        for name in ("quantize_row_q4_K_ref", "quantize_row_q6_K_ref", "quantize_row_q8_K_ref",
                     "dequantize_row_q4_K", "dequantize_row_q6_K"):
            getattr(self.base, name).argtypes = [vp, vp, i64]
            getattr(self.base, name).restype = None
        for name in ("ggml_vec_dot_q4_K_q8_K_generic", "ggml_vec_dot_q6_K_q8_K_generic"):
            f = getattr(self.cpu, name)
            f.argtypes = [ctypes.c_int, vp, ctypes.c_size_t, vp, ctypes.c_size_t, vp,
                          ctypes.c_size_t, ctypes.c_int]
            f.restype = None

    def quantize(self, kind, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(len(x) // QK_K * SIZES[kind], dtype=np.uint8)
        f = {"q4_k": self.base.quantize_row_q4_K_ref, "q6_k": self.base.quantize_row_q6_K_ref,
             "q8_k": self.base.quantize_row_q8_K_ref}[kind]
        f(x.ctypes.data, out.ctypes.data, len(x))
        return out

    def dequantize(self, kind, blocks):
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        n = len(blocks) // SIZES[kind] * QK_K
        out = np.zeros(n, dtype=np.float32)
        f = {"q4_k": self.base.dequantize_row_q4_K, "q6_k": self.base.dequantize_row_q6_K}[kind]
        f(blocks.ctypes.data, out.ctypes.data, n)
        return out

    def dot(self, kind, w, xq):
        w = np.ascontiguousarray(w, dtype=np.uint8)
        xq = np.ascontiguousarray(xq, dtype=np.uint8)
        n = len(xq) // SIZES["q8_k"] * QK_K
        s = np.zeros(1, dtype=np.float32)
        f = {"q4_k": self.cpu.ggml_vec_dot_q4_K_q8_K_generic,
             "q6_k": self.cpu.ggml_vec_dot_q6_K_q8_K_generic}[kind]
        f(n, s.ctypes.data, 0, w.ctypes.data, 0, xq.ctypes.data, 0, 1)
        return s


def gguf_deq(kind, blocks):
    qt = {"q4_k": T.Q4_K, "q6_k": T.Q6_K}[kind]
    return dequantize(np.asarray(blocks, dtype=np.uint8).reshape(-1, SIZES[kind]), qt).reshape(-1)


def rows():
    rng = np.random.default_rng(20261207)
    yield "zeros", np.zeros(256, np.float32)
    yield "normal_512", rng.standard_normal(512, dtype=np.float32)
    # Sub-blocks of 32 from 1e-6 to 1e4: the 6-bit scales lose the small ones.
    mags = np.repeat(10.0 ** np.linspace(-6, 4, 8), 32)
    yield "magnitudes", (rng.standard_normal(256) * mags).astype(np.float32)
    # All positive (Q4_K's min clamps to 0) and all negative (large mins).
    yield "positive", rng.uniform(1.0, 2.0, 256).astype(np.float32)
    yield "negative", rng.uniform(-3.0, -1.0, 256).astype(np.float32)
    # One spike among tiny values; constant sub-blocks beside zero ones.
    spike = (rng.standard_normal(256) * 1e-4).astype(np.float32)
    spike[77] = -100.0
    yield "spike", spike
    const = np.concatenate([np.full(16, v, np.float32) for v in
                            [0, 3, -3, 0, 1e-3, 0, 7, 7, -0.5, 0, 0, 2, 2, 0, -9, 1]])
    yield "constant_groups", const
    # Scales that underflow f16 (d = 0: the fit's quants are kept).
    yield "tiny", (rng.standard_normal(256) * 1e-9).astype(np.float32)
    # Q8_K ties: max -127 gives iscale 1, so k + 0.5 rounds to even.
    ties = np.array([-127.0] + [k + 0.5 for k in range(-127, 127)] + [0.0], np.float32)
    yield "ties", ties
    yield "heavy_tail", (rng.standard_normal(256) ** 3).astype(np.float32)


def hostile_blocks():
    rng = np.random.default_rng(7)
    f16 = lambda v: np.array([v], "<f2").view(np.uint8)
    rnd = lambda n: rng.integers(0, 256, n, dtype=np.uint8)

    def q4(d, dmin, scales, qs):
        return np.concatenate([f16(d), f16(dmin), scales, qs]).astype(np.uint8)

    yield "q4_k", "random", q4(1.0, 0.5, rnd(12), rnd(128))
    yield "q4_k", "negative_dmin_large_d", q4(60000.0, -60000.0, rnd(12), rnd(128))
    yield "q4_k", "subnormal_d", q4(6e-8, 3e-7, rnd(12), rnd(128))
    yield "q4_k", "all_bits_set", q4(0.25, 0.125, np.full(12, 255, np.uint8), np.full(128, 255, np.uint8))
    yield "q4_k", "zeros", np.zeros(144, np.uint8)
    yield "q4_k", "random_scales_d", q4(rng.uniform(-4, 4), rng.uniform(-4, 4), rnd(12), rnd(128))

    def q6(scales, d):
        return np.concatenate([rnd(128), rnd(64), np.asarray(scales, np.int8).view(np.uint8),
                               f16(d)]).astype(np.uint8)

    yield "q6_k", "random", q6(rnd(16).view(np.int8), 1.0)
    yield "q6_k", "scales_minus_128", q6(np.full(16, -128), -2.0)
    b = q6(np.full(16, 127), 0.5)
    b[:192] = 255
    yield "q6_k", "all_bits_set", b
    yield "q6_k", "subnormal_d", q6(rnd(16).view(np.int8), 6e-8)
    yield "q6_k", "large_d", q6(rnd(16).view(np.int8), -65504.0)
    yield "q6_k", "zeros", np.zeros(210, np.uint8)


def hexle(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype).tobytes().hex()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    have = importlib.metadata.version("gguf")
    if have != GGUF_VERSION:
        sys.exit(f"gguf {have} installed; this fixture is made with gguf {GGUF_VERSION}")
    g = Ggml(sys.argv[1])
    out = {"gguf_version": GGUF_VERSION, "ggml": "llama-cpp-python 0.3.36", "rows": [], "blocks": []}
    all_rows = list(rows())
    quants = []
    for name, x in all_rows:
        assert x.dtype == np.float32 and x.ndim == 1 and len(x) % QK_K == 0, name
        q = {k: g.quantize(k, x) for k in ("q4_k", "q6_k", "q8_k")}
        for k in ("q4_k", "q6_k"):
            a, b = g.dequantize(k, q[k]), gguf_deq(k, q[k])
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (name, k)
        quants.append(q)
    for i, ((name, x), q) in enumerate(zip(all_rows, quants)):
        nxt = next((quants[j] for j in range(i + 1, len(all_rows)) if len(all_rows[j][1]) == len(x)), q)
        row = {"name": name, "n": len(x), "x": hexle(x, "<f4")}
        row.update({k: v.tobytes().hex() for k, v in q.items()})
        for k in ("q4_k", "q6_k"):
            row["dot_" + k] = hexle(g.dot(k, q[k], nxt["q8_k"]), "<f4")
        out["rows"].append(row)
    for kind, name, b in hostile_blocks():
        assert len(b) == SIZES[kind], name
        a, deq = g.dequantize(kind, b), gguf_deq(kind, b)
        assert np.array_equal(a.view(np.uint32), deq.view(np.uint32)), (kind, name)
        out["blocks"].append({"type": kind, "name": name, "bytes": b.tobytes().hex(),
                              "deq": hexle(deq, "<f4")})
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
