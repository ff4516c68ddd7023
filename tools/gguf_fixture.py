#!/usr/bin/env python3
"""Writes the GGUF oracle fixtures of tests/gguf.rs with llama.cpp's own
`gguf` Python package, and what that package's GGUFReader reads back.

    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf numpy
    /tmp/gguf-venv/bin/python tools/gguf_fixture.py

Writes into tests/fixtures/gguf/:
  mixed.gguf                    every metadata value type (nested array too),
                                tensors of F32, F16, BF16, I32, Q4_0, Q5_1, Q8_0,
                                Q4_K, Q6_K, general.alignment 64
  split-0000{1,2}-of-00002.gguf the same model split in 2 parts by the writer
                                (split.* keys), default alignment
  reader.json                   per file: GGUFReader's fields (name, value types,
                                value) and tensors (name, ggml type id, shape,
                                n_elements, n_bytes, absolute data offset),
                                alignment and data offset

Not run by the test suite; the Rust test compares its parse with reader.json.
"""

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"


def add_metadata(w: gguf.GGUFWriter, alignment: int | None) -> None:
    """One key per GGUF value type, arrays of several element types, a
    nested array, a non-ASCII string."""
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", 0.15625)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "naïve ☃ text")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 0.1)
    w.add_uint32("llama.block_count", 2)
    w.add_key_value("test.arr.u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr.i16", [-1, 2, -3], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("test.arr.u64", [0, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.arr.f64", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT64)
    w.add_key_value("test.arr.bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    w.add_token_list(["<unk>", "<s>", "</s>", "▁the", "é", ""])
    w.add_token_scores([0.0, -1.5, -2.25, 3.0, -4.0, 0.0])
    w.add_token_types([2, 3, 3, 1, 1, 6])
    w.add_key_value("test.nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)
    if alignment is not None:
        w.add_custom_alignment(alignment)


def add_tensors(w: gguf.GGUFWriter) -> None:
    rng = np.random.default_rng(7)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", f(6, 32))
    w.add_tensor("blk.0.attn_norm.weight", f(32))
    w.add_tensor("blk.0.attn_q.weight", f(32, 64).astype(np.float16))
    w.add_tensor("blk.0.attn_k.weight", gguf.quants.quantize(f(16, 64), Q.BF16), raw_dtype=Q.BF16)
    w.add_tensor("blk.0.attn_v.weight", gguf.quants.quantize(f(16, 64), Q.Q4_0), raw_dtype=Q.Q4_0)
    w.add_tensor("blk.0.ffn_up.weight", gguf.quants.quantize(f(4, 64), Q.Q5_1), raw_dtype=Q.Q5_1)
    w.add_tensor("blk.0.ffn_down.weight", gguf.quants.quantize(f(3, 2, 32), Q.Q8_0), raw_dtype=Q.Q8_0)
    # gguf-py cannot quantize k-quants; zero blocks are valid ones.
    kq = lambda t, rows, cols: np.zeros(  # noqa: E731
        gguf.quants.quant_shape_to_byte_shape((rows, cols), t), dtype=np.uint8
    )
    w.add_tensor("blk.1.ffn_gate.weight", kq(Q.Q4_K, 2, 256), raw_dtype=Q.Q4_K)
    w.add_tensor("output.weight", kq(Q.Q6_K, 3, 512), raw_dtype=Q.Q6_K)
    w.add_tensor("rope_freqs.weight", np.arange(5, dtype=np.int32))


def write(path: Path, alignment: int | None = None, **kw) -> None:
    w = gguf.GGUFWriter(path, "llama", **kw)
    add_metadata(w, alignment)
    add_tensors(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def plain(v):
    """JSON-able value: numpy scalars to Python, bytes never appear."""
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


def read_back(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    fields = []
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue  # the reader's own entries for the header counts
        types = [t.name for t in field.types]
        if types[:2] == ["ARRAY", "ARRAY"]:
            # GGUFReader keeps only the leaves of nested arrays, in order.
            value = [plain(x) for i in field.data for x in field.parts[i].tolist()]
        else:
            value = plain(field.contents())
        fields.append({"key": name, "types": types, "value": value})
    tensors = [
        {
            "name": t.name,
            "type": int(t.tensor_type),
            "type_name": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "offset": int(t.data_offset),
        }
        for t in r.tensors
    ]
    return {
        "file_len": path.stat().st_size,
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "fields": fields,
        "tensors": tensors,
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "mixed.gguf", alignment=64)
    # Default alignment: gguf-py 0.19 writes general.alignment into part 1
    # only but pads every part to it, so with 64 its part 2 data sits 32
    # bytes after where any reader (gguf-py's own included) looks.
    write(OUT / "split.gguf", split_max_tensors=6)
    names = ["mixed.gguf", "split-00001-of-00002.gguf", "split-00002-of-00002.gguf"]
    report = {"gguf_py": importlib.metadata.version("gguf")}
    report["files"] = {n: read_back(OUT / n) for n in names}
    (OUT / "reader.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    total = sum((OUT / n).stat().st_size for n in names)
    print(f"wrote {', '.join(names)} ({total} bytes) and reader.json to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
