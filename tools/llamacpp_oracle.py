#!/usr/bin/env python3
"""llama.cpp as the oracle for `--quantize`: writes `llamacpp.json` beside
each HF fixture in tests/fixtures.

    bash tools/llamacpp_oracle.sh            (makes the venv, then runs this)
    VENV/bin/python tools/llamacpp_oracle.py LLAMA_CPP_DIR [FIXTURE ...]

For each fixture and each of Q8_0 and Q4_0 (and Q4_K, Q6_K for the
fixtures in K_FIXTURES, whose matrices are whole 256-weight
super-blocks), with llama.cpp's own tools:
1. The HF directory is copied; a tied model gets an explicit
   `lm_head.weight` (the embedding's values) and `tie_word_embeddings:
   false`, so the GGUF holds an `output.weight` of its own that the
   quantizer can type apart from the embedding (the same function).
2. llama.cpp's `convert_hf_to_gguf.py --outtype f32` writes an f32 GGUF.
   The fixtures' tokenizers are not in its list of known BPE
   pre-tokenizers; it is told "default", which only affects text
   handling, and the oracle runs on token ids.
3. `llama_model_quantize` (the quantizer behind `llama-quantize`) makes
   Q8_0 / Q4_0 files with the types tpi uses: layer matrices in the type
   (a matrix whose rows are not whole 32-blocks falls back to F16, in
   llama.cpp's own rule), `output.weight` Q8_0, `token_embd.weight` F32.
   The K files come from the Q4_K_M / Q6_K mixtures with `pure` set, so
   llama.cpp does not promote some matrices to other K types (attn_v,
   ffn_down to Q6_K in Q4_K_M): every layer matrix is the mixture's base
   type, as in tpi. No importance matrix: ggml's reference quantizers.
4. llama.cpp evaluates each reference prompt's ids on 1 thread with an f32
   KV cache, and records the last prompt position's logits and the greedy
   continuation (argmax, LENGTH tokens, end-of-text ignored) with each
   step's margin between its top two logits.
"""
import json
import os
import runpy
import shutil
import sys
import tempfile

import numpy as np

LENGTH = 16
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0 = 0, 1, 2, 8
# LLAMA_FTYPE_MOSTLY_Q8_0 / _Q4_0 / _Q4_K_M / _Q6_K (include/llama.h)
FTYPE = {"q8_0": 7, "q4_0": 2, "q4_k": 15, "q6_k": 18}
# Types recorded per fixture; the K-quants only where super-blocks fit.
QUANTS = ("q8_0", "q4_0")
K_FIXTURES = {"llama-k256"}


def untied_copy(src, dst):
    """Copies an HF model directory; ties become an explicit lm_head."""
    shutil.copytree(src, dst)
    cfg_path = os.path.join(dst, "config.json")
    cfg = json.load(open(cfg_path))
    if not cfg.get("tie_word_embeddings", False):
        return
    from safetensors.torch import load_file, save_file

    st = os.path.join(dst, "model.safetensors")
    tensors = load_file(st)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, st, metadata={"format": "pt"})
    cfg["tie_word_embeddings"] = False
    json.dump(cfg, open(cfg_path, "w"), indent=2)


def convert(llama_dir, hf_dir, out):
    """llama.cpp's convert_hf_to_gguf.py, in this process."""
    sys.path.insert(0, llama_dir)
    sys.path.insert(0, os.path.join(llama_dir, "gguf-py"))
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outtype", "f32", "--outfile", out]
    try:
        runpy.run_path(os.path.join(llama_dir, "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    finally:
        sys.argv = argv


def quantize(src, dst, quant):
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = 1
    p.ftype = FTYPE[quant]
    p.output_tensor_type = GGML_Q8_0
    p.token_embedding_type = GGML_F32
    # Base type for every layer matrix; only the K mixtures need it.
    p.pure = quant in ("q4_k", "q6_k")
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {quant}: {rc}")


def tensor_types(path):
    import gguf

    r = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in r.tensors}


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

    out = []
    for ids in prompts:
        m.reset()
        m.eval(ids)
        last = last_logits()
        logits = last
        greedy, margins = [], []
        for _ in range(LENGTH):
            top2 = np.argsort(-logits)[:2]
            tok = int(top2[0])
            greedy.append(tok)
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            m.eval([tok])
            logits = last_logits()
        out.append(
            {
                "ids": ids,
                "last_logits": [float(x) for x in last],
                "greedy_ids": greedy,
                "greedy_margins": margins,
            }
        )
    return out


def main():
    import llama_cpp

    llama_dir = sys.argv[1]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    names = sys.argv[2:] or ["llama-mha-f32", "llama-gqa-bf16", "stories260K"]
    for name in names:
        fixture = os.path.join(root, name)
        ref = json.load(open(os.path.join(fixture, "reference.json")))
        prompts = [p["ids"] for p in ref["prompts"]]
        result = {
            "format": "tpi-llamacpp-reference/1",
            "oracle": "llama.cpp via llama-cpp-python %s (built from source), "
            "convert_hf_to_gguf.py --outtype f32, llama_model_quantize, "
            "1 thread, f32 KV cache" % llama_cpp.__version__,
            "length": LENGTH,
            "types": {},
        }
        with tempfile.TemporaryDirectory() as tmp:
            hf = os.path.join(tmp, "hf")
            untied_copy(fixture, hf)
            f32 = os.path.join(tmp, "f32.gguf")
            convert(llama_dir, hf, f32)
            quants = QUANTS + (("q4_k", "q6_k") if name in K_FIXTURES else ())
            for quant in quants:
                q = os.path.join(tmp, quant + ".gguf")
                quantize(f32, q, quant)
                types = tensor_types(q)
                result["types"][quant] = {
                    "tensors": types,
                    "prompts": run(q, prompts),
                }
                print(name, quant, sorted(set(types.values())), flush=True)
        with open(os.path.join(fixture, "llamacpp.json"), "w") as f:
            json.dump(result, f, separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main()
