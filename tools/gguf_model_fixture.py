#!/usr/bin/env python3
"""llama.cpp's own converter as the oracle for `tpi::model::gguf_model`:
writes tests/fixtures/gguf_model/NAME.gguf, the f32 GGUF of each HF
fixture tests/fixtures/NAME.

    . tools/llamacpp_env.sh /tmp/tpi-llamacpp     (makes the venv)
    "$py" tools/gguf_model_fixture.py "$llama_dir" [NAME ...]

NAME defaults to the committed ones: stories260K (1 MB: GQA, tied
embeddings) and two tiny models this script makes with transformers
(seeded random weights, f32, a fixture's tokenizer), each as an HF
directory tests/fixtures/gguf_model/NAME/ and its GGUF:
- qwen2-tiny: Qwen2ForCausalLM, q/k/v biases, GQA, untied output (the
  converter does not permute qwen2's q/k rows); llama-gqa-bf16's BPE
  tokenizer, which transformers' Qwen2Tokenizer extends by one token
  (`<|endoftext|>`, id 1000), hence 1001;
- llama-bias-tiny: LlamaForCausalLM with attention_bias (the converter
  permutes q/k biases like their rows), GQA, tied; stories260K's
  tokenizer; o_proj's bias is left out (tpi has no role for it).
llama-mha-f32 (untied output) and llama-gqa-bf16 (llama3 rope_freqs,
explicit head_dim) are 1 and 2.6 MB and not committed;
tests/gguf_model.rs checks them too when they have been written.

`convert_hf_to_gguf.py --outtype f32` runs unchanged but for one thing,
as in tools/llamacpp_oracle.py: the fixtures' tokenizers are not in its
list of known BPE pre-tokenizers, so it is told "default" (text handling
only; nothing tested here depends on it).
"""
import os
import runpy
import sys


def convert(llama_dir, hf_dir, out):
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


TINY = {
    "qwen2-tiny": ("llama-gqa-bf16", dict(
        architectures=["Qwen2ForCausalLM"], hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_key_value_heads=1, vocab_size=1001,
        bos_token_id=997, eos_token_id=998,
        tie_word_embeddings=False, use_sliding_window=False,
    )),
    "llama-bias-tiny": ("stories260K", dict(
        architectures=["LlamaForCausalLM"], hidden_size=32, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=1, vocab_size=512,
        bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True, attention_bias=True,
    )),
}


def make_tiny(root, name):
    """A seeded random HF model directory with the stories260K tokenizer."""
    import json
    import shutil

    import torch
    import transformers

    torch.manual_seed(sum(name.encode()))
    tok_from, spec = TINY[name]
    spec = dict(spec)
    arch = spec.pop("architectures")[0]
    cfg = getattr(transformers, arch.replace("ForCausalLM", "Config"))(
        num_hidden_layers=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0, torch_dtype="float32", **spec,
    )
    cfg.architectures = [arch]
    model = getattr(transformers, arch)(cfg).to(torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            # Nonzero everywhere (biases start at zero), distinct per row.
            p.copy_(torch.randn_like(p) * 0.1)
    out = os.path.join(root, "gguf_model", name)
    state = model.state_dict()
    # transformers' attention_bias also gives o_proj a bias, which tpi has
    # no role for (and a GGUF carries as attn_output.bias): left out, the
    # directory is the model with that bias zero.
    state = {k: v.contiguous() for k, v in state.items() if not k.endswith("o_proj.bias")}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(root, tok_from, f), out)
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    llama_dir = sys.argv[1]
    names = sys.argv[2:] or ["stories260K", *TINY]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    out_dir = os.path.join(root, "gguf_model")
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        out = os.path.join(out_dir, f"{name}.gguf")
        hf_dir = make_tiny(root, name) if name in TINY else os.path.join(root, name)
        convert(llama_dir, hf_dir, out)
        print(f"{out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
