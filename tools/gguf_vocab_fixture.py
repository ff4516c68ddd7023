#!/usr/bin/env python3
"""llama.cpp as the oracle for tpi's GGUF tokenizer (src/model/gguf_vocab.rs):
writes tests/fixtures/gguf_vocab/*.json.

    . tools/llamacpp_env.sh /tmp/tpi-bench     (the llama.cpp venv; it has
                                                gguf, llama_cpp, tokenizers)
    $py tools/gguf_vocab_fixture.py "$llama_dir" [hf] [trained] [spm]

Each fixture holds the `tokenizer.ggml.*` metadata of one vocab-only GGUF
(as tpi's GgufVocab: model, pre, tokens, scores, token_types, merges,
special ids and add_* flags) and, for a set of test strings, llama.cpp's
own `tokenize(text, add_bos=True, special=True)` ids and
`llama_detokenize(ids, remove_special=False, unparse_special=True)` text
(what tpi's decode does: special tokens kept); and the ids without BOS
and EOS (`add_special=false`) and whether they decode back to the text.

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
   user-defined for the others, merges as "a b"), once per pre type. It is
   trained without a split regex, so that its merges cross what the pre
   types' regexes cut apart; the HF ids are recorded for "gpt-2".
3. The stories260K vocab edited and written the same way: distinct scores
   (its conversion gives every token -1000), user-defined and extra control
   tokens; and once more without the space prefix and with EOS.

The GGUFs are written to a temporary directory and removed.
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
    "abc123def 12345 2024-12-07 0.5%",
    "DON'T I'LL WE'VE they'RE",
    "end!!!\n\n  indented\n\tmore",
    "a.b,c;d:e?f!g",
    "x  \n  y   \n",
    "Ελληνικά και русский текст",
    "数字123和English混合",
    "<tool>call</tool>",
]


def strings_for(name):
    out = []
    if name in FIXTURES:  # the fixture's reference prompts
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
        # Without BOS / EOS (add_special=false), and whether those ids
        # decode back to the text.
        plain = llm.tokenize(s.encode(), add_bos=False, special=True)
        case["plain_ids"] = plain
        case["round_trip"] = detokenize(llm, plain) == s
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


OWN_TEXT = """In 2024 there were 12345 items, 3.14159 of them round; 1,000,000 more!!!
DON'T SHOUT. I'll say it again: it's 7:27 now, and we've 49856 left.
    def f(x):  # indented code, tabs\tand spaces
        return [x ** 2 for x in range(10)]
中文文本和数字123混合。日本語のテキストです。한국어 텍스트.
Ελληνικά κείμενα και русский текст тоже.
"""


def training_text():
    """Docstrings of Python's standard library (a few hundred kB), and
    a few lines written here with digits, CJK, Greek and Cyrillic."""
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
    return texts + [OWN_TEXT] * 20


def trained(llama_dir, tmp):
    import gguf
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    # Trained without a split regex, so that merges cross the pieces the
    # pre types' regexes cut apart and each pre type gives other ids.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer)
    # Saved with GPT-2's regex: the HF reference for the "gpt-2" pre type.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
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
        write_gguf(out, {
            "model": "gpt2", "pre": pre, "tokens": tokens, "scores": None,
            "token_types": types, "merges": merges, "bos": eot,
            "eos": vocab["<|im_end|>"], "unk": None, "add_bos": True,
            "add_eos": None, "add_space_prefix": None,
        })
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


def write_gguf(out, v):
    """A vocab-only GGUF for the `llama` architecture: the few llama
    hyper-parameters llama.cpp reads before it skips the tensors, and the
    tokenizer.ggml.* keys of `v` (a GgufVocab as a dict)."""
    import gguf

    w = gguf.GGUFWriter(out, "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_vocab_size(len(v["tokens"]))
    w.add_tokenizer_model(v["model"])
    if v.get("pre") is not None:
        w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    if v.get("scores") is not None:
        w.add_token_scores(v["scores"])
    if v.get("token_types") is not None:
        w.add_token_types(v["token_types"])
    if v.get("merges") is not None:
        w.add_token_merges(v["merges"])
    for key, add in [("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                     ("unk", w.add_unk_token_id)]:
        if v.get(key) is not None:
            add(v[key])
    for key, add in [("add_bos", w.add_add_bos_token), ("add_eos", w.add_add_eos_token),
                     ("add_space_prefix", w.add_add_space_prefix)]:
        if v.get(key) is not None:
            add(v[key])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_variants(llama_dir, tmp):
    """The stories260K vocab with what its conversion lacks: distinct
    scores (-id for normal tokens, as SentencePiece's own models have),
    user-defined and extra control tokens; and once more without the
    space prefix and with EOS added."""
    base = json.load(open(os.path.join(OUT, "stories260K.json")))["vocab"]
    scored = dict(base)
    scored["tokens"] = base["tokens"] + ["<tool>", "<|im_end|>", "▁<x>"]
    scored["token_types"] = base["token_types"] + [4, 3, 4]
    scored["scores"] = [(-float(i) if t == 1 else 0.0)
                        for i, t in enumerate(base["token_types"])] + [0.0, 0.0, 0.0]
    noprefix = dict(scored)
    noprefix["add_space_prefix"] = False
    noprefix["add_eos"] = True
    for name, v in [("stories260K-scored", scored), ("stories260K-noprefix", noprefix)]:
        out = os.path.join(tmp, name + ".gguf")
        write_gguf(out, v)
        vocab_meta = read_vocab(out)
        cases = oracle(out, strings_for("stories260K"))
        os.remove(out)
        write(name, vocab_meta, cases, f"stories260K's vocab edited ({spm_variants.__doc__.split(':')[0]}), GGUFWriter")


def main():
    llama_dir = sys.argv[1]
    which = sys.argv[2:] or ["hf", "trained", "spm"]
    with tempfile.TemporaryDirectory() as tmp:
        if "hf" in which:
            hf_fixtures(llama_dir, tmp)
        if "trained" in which:
            trained(llama_dir, tmp)
        if "spm" in which:
            spm_variants(llama_dir, tmp)


if __name__ == "__main__":
    main()
