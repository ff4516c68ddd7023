#!/usr/bin/env python3
"""Writes tests/fixtures/llama-k256: a random-weight HF llama whose layer
matrices are whole 256-weight super-blocks, so `--quantize q4_k|q6_k`
stores them as K-quants (the other fixtures are hidden 64/128: every
K-quant matrix falls back there), and its transformers float32 oracle
`reference.json` (schema `tpi-fixture-reference/1`, as the other fixtures).

    /tmp/tpi-bench/venv-llamacpp/bin/python tools/make_k256_fixture.py

(the llama.cpp oracle venv of tools/llamacpp_env.sh: torch, transformers,
safetensors). Then `bash tools/llamacpp_oracle.sh DIR llama-k256` records
llama.cpp's Q8_0 / Q4_0 / Q4_K / Q6_K outputs beside it.

Shape: hidden 256, 8 query heads of head_dim 64 (query width 512, so
o_proj has 512 columns: two 4-head units of 256 at world size 2), 2 KV
heads, intermediate 512 (two 256-column MLP slices at world size 2), 3
layers (so a memory window of 2 blocks streams), vocab 512 with
stories260K's tokenizer, tied embedding, stored bf16: 4.6 MB. At world
size 3 o_proj cannot be cut into 256-column units anyway (two units for
three ranks), so a wider MLP would add bytes and no K-quant run. Weights are normal with std 0.08 (`initializer_range`): the other
random fixtures pick theirs (0.15 at hidden 64, 0.12 at 128) so the logits
have a std near 1.3; 0.08 does that at hidden 256. The seed is the first
from SEED whose greedy continuations keep every top-2 margin >= 0.01, so
float engines can be held to exact ids.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import safetensors
import tokenizers
import torch
import transformers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "llama-k256")
TOKENIZER_FROM = os.path.join(ROOT, "stories260K")
SEED = 256
GREEDY = 32
MIN_MARGIN = 0.01
PROMPTS = [
    "Once upon a time",
    "Lily and Ben went to the park. They saw a big",
    "The little dog was sad because he lost his ball. His friend",
]


def config():
    return transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=512,
        initializer_range=0.08,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def greedy(model, ids):
    """Argmax loop with full recompute, no EOS stop."""
    seq, out, margins = list(ids), [], []
    for _ in range(GREEDY):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]
        top2 = torch.topk(logits, 2)
        tok = int(top2.indices[0])
        out.append(tok)
        margins.append(float(top2.values[0] - top2.values[1]))
        seq.append(tok)
    return out, margins


def reference(model, tok):
    prompts = []
    for text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        top5 = torch.topk(logits, 5, dim=-1)
        g_ids, margins = greedy(model, ids)
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]),
                max_new_tokens=GREEDY,
                min_new_tokens=GREEDY,
                do_sample=False,
                use_cache=True,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(ids) :].tolist()
        prompts.append(
            {
                "text": text,
                "ids": ids,
                "n_tokens": len(ids),
                "last_logits": [float(x) for x in logits[-1]],
                "top5_ids": top5.indices.tolist(),
                "top5_logits": top5.values.tolist(),
                "greedy": {
                    "n_new": GREEDY,
                    "ids": g_ids,
                    "text": tok.decode(g_ids, skip_special_tokens=False),
                    "text_skip_special": tok.decode(g_ids, skip_special_tokens=True),
                    "full_text": tok.decode(ids + g_ids, skip_special_tokens=False),
                    "top1_top2_margins": margins,
                    "min_margin": min(margins),
                    "first_eos_index": g_ids.index(2) if 2 in g_ids else None,
                    "hf_generate_kv_cache_agrees": gen == g_ids,
                },
            }
        )
    return prompts


def main():
    tok = tokenizers.Tokenizer.from_file(os.path.join(TOKENIZER_FROM, "tokenizer.json"))
    assert tok.get_vocab_size() <= config().vocab_size
    seed = SEED
    while True:
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config()).to(torch.bfloat16)
        shutil.rmtree(OUT, ignore_errors=True)
        os.makedirs(OUT)
        model.save_pretrained(OUT, safe_serialization=True)
        # The oracle: the stored bf16 weights, up-cast exactly, computed in f32.
        f32 = transformers.AutoModelForCausalLM.from_pretrained(
            OUT, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        prompts = reference(f32, tok)
        margin = min(p["greedy"]["min_margin"] for p in prompts)
        print(f"seed {seed}: min greedy margin {margin:.4f}", flush=True)
        if margin >= MIN_MARGIN:
            break
        seed += 1
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(TOKENIZER_FROM, f), os.path.join(OUT, f))
    cfg = json.load(open(os.path.join(OUT, "config.json")))
    files = sorted(f for f in os.listdir(OUT) if f.endswith((".json", ".safetensors")))
    sha = {f: hashlib.sha256(open(os.path.join(OUT, f), "rb").read()).hexdigest() for f in files}
    ref = {
        "format": "tpi-fixture-reference/1",
        "model_dir": "llama-k256",
        "prompt_set": "stories-shared",
        "oracle": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "compute_dtype": "float32",
            "device": "cpu",
            "attn_implementation": "eager",
            "method": "transformers AutoModelForCausalLM.from_pretrained(dir, dtype=float32); "
            "greedy = argmax loop with full recompute, no EOS stop "
            "(tools/make_k256_fixture.py, torch seed %d)" % seed,
        },
        "files_sha256": sha,
        "config": {
            "architecture": "LlamaForCausalLM",
            "hidden_size": cfg["hidden_size"],
            "num_hidden_layers": cfg["num_hidden_layers"],
            "num_attention_heads": cfg["num_attention_heads"],
            "num_key_value_heads": cfg["num_key_value_heads"],
            "head_dim": cfg["head_dim"],
            "intermediate_size": cfg["intermediate_size"],
            "vocab_size": cfg["vocab_size"],
            "tie_word_embeddings": cfg["tie_word_embeddings"],
            "rms_norm_eps": cfg["rms_norm_eps"],
            "rope_parameters": f32.config.rope_parameters,
            "stored_dtype": "bfloat16",
            "attention_bias": cfg["attention_bias"],
        },
        "special_tokens": {
            "bos_token_id": 1,
            "eos_token_ids": [2],
            "pad_token_id": None,
            "unk_token_id": 0,
            "tokenizer_adds_bos": True,
            "prompt_ids_from": "tokenizer.json via the tokenizers library, "
            "encode(text, add_special_tokens=True)",
        },
        "prompts": prompts,
        "min_greedy_margin": min(p["greedy"]["min_margin"] for p in prompts),
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    for p in prompts:
        print(p["ids"], p["greedy"]["ids"][:8], "kv cache agrees", p["greedy"]["hf_generate_kv_cache_agrees"])


if __name__ == "__main__":
    main()
