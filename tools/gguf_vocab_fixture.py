#!/usr/bin/env python3
"""llama.cpp as the oracle for tpi's GGUF tokenizer (src/model/gguf_vocab.rs):
writes tests/fixtures/gguf_vocab/*.json.

    . tools/llamacpp_env.sh /tmp/tpi-bench     (the llama.cpp venv)
    $py -m pip install ...                     (nothing extra is needed)
    $py tools/gguf_vocab_fixture.py "$llama_dir"

Each fixture holds the `tokenizer.ggml.*` metadata of one vocab-only GGUF
(as tpi's GgufVocab: model, pre, tokens, scores, token_types, merges,
special ids and add_* flags) and, for a set of test strings, llama.cpp's
own `tokenize(text, add_bos=True, special=True)` ids and
`llama_detokenize(ids, remove_special=False, unparse_special=True)` text
(what tpi's decode does: special tokens kept), of the whole ids and of the
ids without BOS (the round trip).

Sources of the GGUFs:
1. The HF fixtures in tests/fixtures (stories260K is a SentencePiece-BPE
   "llama" vocab; llama-mha-f32 and llama-gqa-bf16 are byte-level "gpt2"
   vocabs with the GPT-2 and the Llama-3 split regex), converted by
   llama.cpp's own convert_hf_to_gguf.py. The converter does not know
   these tiny tokenizers' pre-tokenizer hashes; it is told the pre type
   that matches each tokenizer.json's split regex. The HF ids of each
   string (the `tokenizers` package on the fixture's tokenizer.json) are
   recorded too.
2. A byte-level BPE (vocab 1500) trained here with the `tokenizers`
   package on docstrings of Python's standard library, written into a
   vocab-only GGUF the way the converter's `_set_vocab_gpt2` does
   (tokens by id, types normal / control for special added tokens /
   user-defined for the others, merges as "a b"), once per pre type.
"""
import ctypes
import json
import os
import runpy
import sys
import tempfile

FIXTURES = {"stories260K": None, "llama-mha-f32": "gpt-2", "llama-gqa-bf16": "llama-bpe"}
TRAINED_PRES = ["qwen2", "llama-bpe", "gpt-2", "deepseek-llm", "default"]

HOSTILE = [
    "",
    " ",
    "   ",
    "hello",
    " hello",
    "hello ",
    "  hello  world  ",
    "a  b   c    d",
    "a\nb",
    "\n",
    "\n\n\nx\n",
    "line1\r\nline2",
    "\ttab\tsep\t",
    " \t \n ",
    "Hello, World! It's 2024; don't you'll I'M 'S 'Ll",
    "123456789 3.14159 1,000,000",
    "Ⅻ ½ ² ٣",
    "é ü ñ ß Ω≈ç√∫",
    "日本語のテキストです。",
    "中文，标点！",
    "한국어 텍스트",
    "emoji 🙂🎉 mixed 👨‍👩‍👧",
    "\u00a0nbsp\u3000ideo\u2003em",
    "zero\u200bwidth",
    "<s>",
    "</s>",
    "<s>hello</s>",
    "a <s> b </s> c",
    "<unk>",
    "<0x41> literal",
    "\u2581 lower one eighth block",
    "<|begin_of_text|>hi<|eot_id|>",
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|>x",
    "supercalifragilisticexpialidocious" * 4,
    "x" * 300,
    "    def f(x):\n        return x ** 2  # comment\n",
    "C'est l'été, n'est-ce pas? «Oui»",
    "$+<=>^~| ~~~ !!! ... ???",
]


def strings_for(name):
    out = []
    if name in FIXTURES:
        ref = json.load(open(os.path.join(ROOT, "tests/fixtures", name, "reference.json")))
        out += [p["text"] for p in ref["prompts"]]
    return out + HOSTILE


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests/fixtures/gguf_vocab")


def convert(llama_dir, hf_dir, pre, out):
    """llama.cpp's convert_hf_to_gguf.py, in this process, told `pre`."""
    if llama_dir not in sys.path:
        sys.path.insert(0, llama_dir)
        sys.path.insert(0, os.path.join(llama_dir, "gguf-py"))
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outtype", "f32", "--outfile", out]
    try:
        runpy.run_path(os.path.join(llama_dir, "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    finally:
        sys.argv = argv


def read_vocab(path):
    """The tokenizer.ggml.* metadata of a GGUF, as tpi's GgufVocab."""
    import gguf

    r = gguf.GGUFReader(path)

    def field(key):
        f = r.fields.get("tokenizer.ggml." + key)
        return None if f is None else f.contents()

    ints = lambda v: None if v is None else int(v)
    bools = lambda v: None if v is None else bool(v)
    return {
        "model": field("model"),
        "pre": field("pre"),
        "tokens": field("tokens"),
        "scores": None if field("scores") is None else [float(s) for s in field("scores")],
        "token_types": None if field("token_type") is None else [int(t) for t in field("token_type")],
        "merges": field("merges"),
        "bos": ints(field("bos_token_id")),
        "eos": ints(field("eos_token_id")),
        "unk": ints(field("unknown_token_id")),
        "pad": ints(field("padding_token_id")),
        "add_bos": bools(field("add_bos_token")),
        "add_eos": bools(field("add_eos_token")),
        "add_space_prefix": bools(field("add_space_prefix")),
    }


def detokenize(llm, ids):
    import llama_cpp

    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, size, False, True)
    assert 0 <= n <= size, n
    return buf.raw[:n].decode("utf-8", errors="replace")


def oracle(gguf_path, strings, hf_json=None):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
    hf = None
    if hf_json is not None:
        import tokenizers

        hf = tokenizers.Tokenizer.from_file(hf_json)
    cases = []
    for s in strings:
        ids = llm.tokenize(s.encode(), add_bos=True, special=True)
        case = {
            "text": s,
            "ids": ids,
            "decoded": detokenize(llm, ids),
        }
        rest = ids[1:] if ids and ids[0] == llm.token_bos() else ids
        case["round_trip"] = detokenize(llm, rest) == s
        if hf is not None:
            case["hf_ids"] = hf.encode(s).ids
        cases.append(case)
    del llm
    return cases


def write(name, vocab, cases, source):
    os.makedirs(OUT, exist_ok=True)
    doc = {"source": source, "vocab": vocab, "cases": cases}
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    agree = sum(1 for c in cases if c.get("hf_ids", c["ids"]) == c["ids"])
    print(f"{name}: {len(vocab['tokens'])} tokens, {len(cases)} strings, hf agrees on {agree}")


def hf_fixtures(llama_dir, tmp):
    for name, pre in FIXTURES.items():
        hf_dir = os.path.join(ROOT, "tests/fixtures", name)
        out = os.path.join(tmp, name + ".gguf")
        convert(llama_dir, hf_dir, pre, out)
        vocab = read_vocab(out)
        cases = oracle(out, strings_for(name), os.path.join(hf_dir, "tokenizer.json"))
        os.remove(out)
        write(name, vocab, cases, f"convert_hf_to_gguf.py tests/fixtures/{name} (pre {pre})")


def training_text():
    """Docstrings of Python's standard library (a few hundred kB)."""
    import importlib
    import inspect

    mods = ["os", "json", "re", "string", "textwrap", "collections", "functools",
            "itertools", "pathlib", "argparse", "logging", "unittest", "email",
            "http.client", "urllib.parse", "subprocess", "threading", "typing"]
    texts = []
    for m in mods:
        mod = importlib.import_module(m)
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def trained(llama_dir, tmp):
    import gguf
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer)
    tok.add_tokens([tokenizers.AddedToken("<tool>", special=False, normalized=False)])
    hf_json = os.path.join(tmp, "trained.tokenizer.json")
    tok.save(hf_json)
    spec = json.load(open(hf_json))
    vocab = tok.get_vocab(with_added_tokens=True)
    n = len(vocab)
    tokens = [None] * n
    for t, i in vocab.items():
        tokens[i] = t
    added = {a["content"]: a for a in spec["added_tokens"]}
    types = []
    for t in tokens:
        if t in added:
            types.append(gguf.TokenType.CONTROL if added[t]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    eot = vocab["<|endoftext|>"]
    for pre in TRAINED_PRES:
        out = os.path.join(tmp, f"trained-{pre}.gguf")
        w = gguf.GGUFWriter(out, "llama")
        w.add_context_length(64)
        w.add_embedding_length(8)
        w.add_block_count(1)
        w.add_feed_forward_length(16)
        w.add_head_count(1)
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(8)
        w.add_vocab_size(n)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(eot)
        w.add_eos_token_id(vocab["<|im_end|>"])
        w.add_add_bos_token(True)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        vocab_meta = read_vocab(out)
        hf = hf_json if pre == "gpt-2" else None
        cases = oracle(out, strings_for("trained"), hf)
        os.remove(out)
        if hf is not None:
            # The HF tokenizer has no post-processor: compare with BOS.
            for c in cases:
                c["hf_ids"] = [eot] + c["hf_ids"]
        write(f"trained-{pre}", vocab_meta, cases,
              f"byte-level BPE trained on stdlib docstrings, GGUFWriter, pre {pre}")


def main():
    llama_dir = sys.argv[1]
    which = sys.argv[2:] or ["hf", "trained"]
    with tempfile.TemporaryDirectory() as tmp:
        if "hf" in which:
            hf_fixtures(llama_dir, tmp)
        if "trained" in which:
            trained(llama_dir, tmp)


if __name__ == "__main__":
    main()
