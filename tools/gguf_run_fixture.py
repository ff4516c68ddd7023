#!/usr/bin/env python3
"""llama.cpp as the oracle for running GGUF files end to end (`tpi --model
file.gguf`): writes small GGUF files made by llama.cpp's own tools into
tests/fixtures/gguf_run/, and tests/fixtures/gguf_run/llamacpp.json with
what llama.cpp computes on each. Not part of the default test run.

    bash tools/gguf_run_fixture.sh [DIR]     (DIR: the llama.cpp venv,
                                              default /tmp/tpi-llamacpp)
or, with the environment of tools/llamacpp_env.sh already made:
    . tools/llamacpp_env.sh DIR
    "$py" tools/gguf_run_fixture.py "$llama_dir"

What it makes (all with llama.cpp's convert_hf_to_gguf.py and
llama_model_quantize, the quantizer behind `llama-quantize`; no `pure`, no
importance matrix, no type overrides: the mixtures users get):
- from tests/fixtures/llama-k256 (tied embeddings, kept tied; matrices
  of whole 256-blocks): k256-q4_0.gguf, k256-q4_k_m.gguf, k256-q6_k.gguf
      convert --outtype f32, then quantize with LLAMA_FTYPE_MOSTLY_Q4_0
      (2), _Q4_K_M (15), _Q6_K (18);
  k256-q4_k_m-00001-of-00002.gguf, k256-q4_k_m-00002-of-00002.gguf
      k256-q4_k_m.gguf split in two by gguf-py's GGUFWriter
      (split_max_tensors), as llama.cpp's gguf-split lays it out: all
      metadata in part 1, `split.no` / `split.count` /
      `split.tensors.count` in each part, tensors in file order;
- from tests/fixtures/llama-gqa-bf16 (GQA, Llama 3 rope scaling, so the
  GGUF holds `rope_freqs.weight`; tied): gqa-q8_0.gguf (f32, then
  MOSTLY_Q8_0), gqa-f16.gguf and gqa-bf16.gguf (--outtype f16 / bf16);
  the 16-bit files of llama-k256 would be 4.6 MB each;
- from tests/fixtures/stories260K (tied): stories-q8_0.gguf (f32, then
  MOSTLY_Q8_0);
- references (no copies) for the committed f32 GGUFs
  ../gguf_model/qwen2-tiny.gguf (prompts of llama-gqa-bf16, whose
  tokenizer it has) and ../gguf_model/llama-bias-tiny.gguf (prompts of
  stories260K).

The converter is told the BPE pre-tokenizer is "default" (the fixtures'
tokenizers are not in its list; text handling only, as in
tools/llamacpp_oracle.py). llama.cpp then evaluates each prompt of the
source fixture's reference.json on 1 thread with an f32 KV cache and
records the last prompt position's logits and the greedy continuation
(LENGTH argmax tokens, end-of-text not stopping it) with each step's
margin between its top two logits. The split model is loaded from its
part 1 and must give the single file's logits exactly.

llamacpp.json: {"format": "tpi-gguf-run-reference/1", "oracle", "length",
"supported_types", "files": {PATH: {...}}}, PATH relative to
tests/fixtures/gguf_run/; each entry: "source" (fixture directory under
tests/fixtures), "made" (how), "ftype" (general.file_type by name),
"parts" (the files to give tpi: [PATH] or the split's parts, part 1
first), "tensors" ({name: ggml type name}), "type_counts",
"unsupported" (names of tensors whose type tpi does not support: tpi
must refuse such a file), "text" and "text_ids" (TEXT as llama.cpp
tokenizes it with the file's vocabulary, BOS added, specials parsed), "vs_hf" (for files from an HF fixture: largest
|llama.cpp - reference.json last_logits| and whether the first LENGTH
greedy ids agree with reference.json's), "prompts": [{"ids",
"last_logits", "greedy_ids", "greedy_margins"}].
"""
import hashlib
import json
import os
import runpy
import shutil
import sys
import tempfile

import numpy as np

LENGTH = 16
GGML_F32 = 0
SUPPORTED = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"]
# LLAMA_FTYPE_MOSTLY_* (include/llama.h)
FTYPE = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q6_k": 18}
SPLIT_MAX_TENSORS = 15
# Text tokenized by llama.cpp from each file's own vocabulary ("text_ids").
TEXT = "Once upon a time, a little girl named Lily found a shiny red ball.\nShe said: \"Hello!\""

# (file, source fixture, how: "convert:OUTTYPE" or "quantize:QUANT")
MADE = [
    ("k256-q4_0.gguf", "llama-k256", "quantize:q4_0"),
    ("k256-q4_k_m.gguf", "llama-k256", "quantize:q4_k_m"),
    ("k256-q6_k.gguf", "llama-k256", "quantize:q6_k"),
    ("gqa-q8_0.gguf", "llama-gqa-bf16", "quantize:q8_0"),
    ("gqa-f16.gguf", "llama-gqa-bf16", "convert:f16"),
    ("gqa-bf16.gguf", "llama-gqa-bf16", "convert:bf16"),
    ("stories-q8_0.gguf", "stories260K", "quantize:q8_0"),
]
SPLIT = ("k256-q4_k_m.gguf", 2)
# Committed f32 GGUFs: (path relative to gguf_run, source, prompts from)
EXISTING = [
    ("../gguf_model/qwen2-tiny.gguf", "gguf_model/qwen2-tiny", "llama-gqa-bf16"),
    ("../gguf_model/llama-bias-tiny.gguf", "gguf_model/llama-bias-tiny", "stories260K"),
]


def convert(llama_dir, hf_dir, out, outtype):
    """llama.cpp's convert_hf_to_gguf.py, in this process."""
    if llama_dir not in sys.path:
        sys.path.insert(0, llama_dir)
        sys.path.insert(0, os.path.join(llama_dir, "gguf-py"))
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outtype", outtype, "--outfile", out]
    try:
        runpy.run_path(os.path.join(llama_dir, "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    finally:
        sys.argv = argv


def quantize(src, dst, quant):
    """llama_model_quantize with its defaults but for the ftype and 1 thread."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = 1
    p.ftype = FTYPE[quant]
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {quant}: {rc}")


def split(src, out_dir, n_parts):
    """src split in n_parts by GGUFWriter; returns the parts' paths."""
    import gguf

    r = gguf.GGUFReader(src)
    assert len(r.tensors) > SPLIT_MAX_TENSORS * (n_parts - 1)
    assert len(r.tensors) <= SPLIT_MAX_TENSORS * n_parts
    arch = r.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    w = gguf.GGUFWriter(os.path.join(out_dir, os.path.basename(src)), arch,
                        split_max_tensors=SPLIT_MAX_TENSORS)
    for field in r.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in r.tensors:
        w.write_tensor_data(t.data, tensor_endianess=r.endianess)
    w.close()
    stem = os.path.basename(src)[: -len(".gguf")]
    parts = [f"{stem}-{i:05d}-of-{n_parts:05d}.gguf" for i in range(1, n_parts + 1)]
    for p in parts:
        assert os.path.exists(os.path.join(out_dir, p)), p
    return parts


def describe(path):
    """(ftype name, {tensor: type name}) of a GGUF (part)."""
    import gguf

    r = gguf.GGUFReader(path)
    f = r.get_field(gguf.Keys.General.FILE_TYPE)
    ftype = gguf.LlamaFileType(int(f.contents())).name if f is not None else None
    return ftype, {t.name: t.tensor_type.name for t in r.tensors}


def run(path, prompts):
    import llama_cpp

    m = llama_cpp.Llama(
        model_path=path,
        n_ctx=512,
        n_batch=512,
        n_threads=1,
        n_threads_batch=1,
        type_k=GGML_F32,
        type_v=GGML_F32,
        flash_attn=False,
        verbose=False,
    )
    n_vocab = m.n_vocab()

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(m.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32)

    text_ids = m.tokenize(TEXT.encode(), add_bos=True, special=True)
    out = []
    for ids in prompts:
        m.reset()
        m.eval(ids)
        last = last_logits().copy()
        assert np.all(np.isfinite(last)), path
        logits = last
        greedy, margins = [], []
        for _ in range(LENGTH):
            top2 = np.argsort(-logits, kind="stable")[:2]
            tok = int(top2[0])
            greedy.append(tok)
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            m.eval([tok])
            logits = last_logits().copy()
            assert np.all(np.isfinite(logits)), path
        out.append({
            "ids": list(ids),
            "last_logits": [float(x) for x in last],
            "greedy_ids": greedy,
            "greedy_margins": margins,
        })
    m.close()
    return out, text_ids


def vs_hf(ref, prompts):
    diff = 0.0
    same = True
    for p, q in zip(ref["prompts"], prompts):
        diff = max(diff, float(np.max(np.abs(np.array(p["last_logits"]) - np.array(q["last_logits"])))))
        same = same and p["greedy"]["ids"][:LENGTH] == q["greedy_ids"]
    return {"max_abs_diff_last_logits": diff, "greedy_ids_match": same}


def entry(path, source, made, prompts, parts, ref=None):
    ftype, tensors = None, {}
    for p in parts:
        f, t = describe(p)
        ftype = ftype or f
        tensors.update(t)
    counts = {}
    for t in tensors.values():
        counts[t] = counts.get(t, 0) + 1
    e = {
        "source": source,
        "made": made,
        "ftype": ftype,
        "tensors": tensors,
        "type_counts": dict(sorted(counts.items())),
        "unsupported": sorted(n for n, t in tensors.items() if t not in SUPPORTED),
    }
    e["prompts"], e["text_ids"] = run(path, prompts)
    if ref is not None:
        e["vs_hf"] = vs_hf(ref, e["prompts"])
    return e


def main():
    import llama_cpp

    if len(sys.argv) != 2:
        sys.exit(__doc__)
    llama_dir = os.path.abspath(sys.argv[1])
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    root = os.path.normpath(root)
    out_dir = os.path.join(root, "gguf_run")
    os.makedirs(out_dir, exist_ok=True)

    def reference(name):
        return json.load(open(os.path.join(root, name, "reference.json")))

    result = {
        "format": "tpi-gguf-run-reference/1",
        "oracle": "llama.cpp via llama-cpp-python %s (built from source): "
        "convert_hf_to_gguf.py (--outtype f16/bf16, or f32 then "
        "llama_model_quantize with default params but ftype and nthread=1: "
        "not pure, no imatrix), split by gguf-py GGUFWriter; evaluated on "
        "1 thread, f32 KV cache, last prompt position's logits and greedy "
        "argmax continuation with EOS ignored" % llama_cpp.__version__,
        "length": LENGTH,
        "text": TEXT,
        "supported_types": SUPPORTED,
        "files": {},
    }
    with tempfile.TemporaryDirectory(prefix="tpi-gguf-run-") as tmp:
        f32 = {}
        for name, source, how in MADE:
            kind, arg = how.split(":")
            out = os.path.join(out_dir, name)
            hf = os.path.join(root, source)
            if kind == "convert":
                convert(llama_dir, hf, out, arg)
                made = f"convert_hf_to_gguf.py --outtype {arg}"
            else:
                if source not in f32:
                    f32[source] = os.path.join(tmp, source + "-f32.gguf")
                    convert(llama_dir, hf, f32[source], "f32")
                quantize(f32[source], out, arg)
                made = (f"convert_hf_to_gguf.py --outtype f32; llama_model_quantize "
                        f"ftype {FTYPE[arg]} (LLAMA_FTYPE_MOSTLY_{arg.upper()})")
            ref = reference(source)
            prompts = [p["ids"] for p in ref["prompts"]]
            result["files"][name] = entry(out, source, made, prompts, [out], ref)
            result["files"][name]["parts"] = [name]
            e = result["files"][name]
            print(name, e["ftype"], e["type_counts"], "unsupported:", e["unsupported"],
                  "vs_hf:", e["vs_hf"], flush=True)

        name, n_parts = SPLIT
        sdir = os.path.join(tmp, "split")
        os.makedirs(sdir)
        parts = split(os.path.join(out_dir, name), sdir, n_parts)
        for p in parts:
            shutil.move(os.path.join(sdir, p), os.path.join(out_dir, p))
        single = result["files"][name]
        ref = reference(single["source"])
        prompts = [p["ids"] for p in ref["prompts"]]
        e = entry(os.path.join(out_dir, parts[0]), single["source"],
                  f"{name} split in {n_parts} by gguf-py GGUFWriter(split_max_tensors="
                  f"{SPLIT_MAX_TENSORS})", prompts, [os.path.join(out_dir, p) for p in parts], ref)
        e["parts"] = parts
        e["same_as"] = name
        assert e["tensors"] == single["tensors"]
        assert e["prompts"] == single["prompts"], "split logits differ from the single file"
        result["files"][parts[0]] = e
        print(parts, "same logits as", name, flush=True)

    for path, source, prompts_from in EXISTING:
        full = os.path.normpath(os.path.join(out_dir, path))
        prompts = [p["ids"] for p in reference(prompts_from)["prompts"]]
        e = entry(full, source, "committed by tools/gguf_model_fixture.py "
                  "(convert_hf_to_gguf.py --outtype f32)", prompts, [full])
        e["prompts_from"] = prompts_from + "/reference.json"
        e["parts"] = [path]
        result["files"][path] = e
        print(path, e["ftype"], e["type_counts"], flush=True)

    for e in result["files"].values():
        e["sha256"] = [
            hashlib.sha256(open(os.path.normpath(os.path.join(out_dir, p)), "rb").read()).hexdigest()
            for p in e["parts"]
        ]
    with open(os.path.join(out_dir, "llamacpp.json"), "w") as f:
        json.dump(result, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
