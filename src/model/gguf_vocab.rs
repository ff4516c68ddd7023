//! A tokenizer from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys),
//! as a [`Tokenizer`] that encodes, decodes and stream-decodes like one
//! read from `tokenizer.json`.
//!
//! The input is [`GgufVocab`], the plain values of those keys (the GGUF
//! parser fills it); [`Tokenizer::from_gguf_vocab`] checks them and builds
//! the tokenizer. The oracle is llama.cpp (`src/llama-vocab.cpp`), whose
//! `tokenize(text, add_special=true, parse_special=true)` ids and
//! `detokenize(ids, remove_special=false, unparse_special=true)` text the
//! tests reproduce (`tests/gguf_vocab.rs`, fixtures written by
//! `tools/gguf_vocab_fixture.py`).
//!
//! # What is built
//!
//! The vocabulary becomes an in-memory `tokenizer.json` (a `serde_json`
//! value) loaded by the `tokenizers` crate, the same path as a file on
//! disk: every piece (BPE model, added tokens, split regexes, decoders,
//! BOS/EOS template) is a documented tokenizer.json object that reads like
//! an HF file, and serde escapes the vocab's strings. Building the crate's
//! Rust objects directly would give the same tokenizer through more API.
//! The cost is the crate's: building a 160k-token, 160k-merge vocab takes
//! about 2 s (x86-64, optimized test build), as loading such a
//! tokenizer.json does.
//!
//! 1. `tokenizer.ggml.model = "gpt2"` (byte-level BPE): a BPE model with
//!    the vocab and the merges in file order (rank = index, as llama.cpp's
//!    `bpe_ranks`), `ignore_merges` where llama.cpp sets it; the
//!    pre-tokenizer is llama.cpp's regex list for `tokenizer.ggml.pre`,
//!    each regex one `Split` (`Isolated`: matches and the text between
//!    them both kept, as `unicode_regex_split`), then `ByteLevel` without
//!    its own regex; `ByteLevel` decoder. Encoding runs in `tokenizers`.
//!    Pre types: "default", "gpt-2", "llama3" / "llama-v3" / "llama-bpe",
//!    "qwen2" / "deepseek-r1-qwen", "deepseek-llm"; any other is
//!    [`VocabError::UnknownPre`] (no fallback to a wrong regex).
//! 2. `"llama"` (SentencePiece BPE with scores and byte fallback):
//!    llama.cpp merges the adjacent pair whose concatenation is a token of
//!    highest *score*, ties to the leftmost pair. HF's BPE merges by a
//!    distinct rank per pair, so equal scores cannot be expressed: GGUFs
//!    that convert_hf_to_gguf.py makes from a `tokenizer.json`-only model
//!    give every token the placeholder score -1000, and ties are then
//!    everywhere. Encoding therefore runs in `Spm`, a port of
//!    `llm_tokenizer_spm_session` and `tokenizer_st_partition`;
//!    the `tokenizers` object (BPE vocab with byte fallback, no merges)
//!    serves decoding and token lookup, with the HF Llama decoder chain
//!    (`▁` -> space, byte fallback, fuse, strip one leading space).
//!
//! # Special tokens
//!
//! Follows llama.cpp with `parse_special = true`, which for tokenizer.json
//! models is also what HF's `encode` does: control (type 3) and unknown
//! (2) tokens are special, user-defined (4) tokens are always matched, all
//! on the raw text before any other processing. In "gpt2" vocabs they are
//! HF added tokens (special / not special, `normalized: false`); in
//! "llama" vocabs `Spm` partitions the text as llama.cpp does (longest
//! token first over the whole text, then the next), and a text piece after
//! a token gets the space prefix again. Decoding keeps them, as
//! [`Tokenizer::decode`] does for tokenizer.json models.
//!
//! # Where tpi, llama.cpp and HF differ
//!
//! - llama.cpp's decode cleans up spaces before punctuation (" ." -> ".",
//!   " 's" -> "'s", ...) for the "default", "gpt-2" and Llama 3 pre types
//!   (`clean_spaces`); tpi's decode (HF's decoders) does not, like HF with
//!   `clean_up_tokenization_spaces: false`. Encoding is unaffected; the
//!   tests check that llama.cpp's clean-up of tpi's text gives its own.
//! - In "gpt2" vocabs, overlapping special tokens are matched leftmost-
//!   longest (HF) rather than longest-token-first (llama.cpp); the two
//!   differ only when one special token's text overlaps another's.
//! - Tokens of type unused (5) decode to their text; llama.cpp prints
//!   nothing for them.
//! - HF's own Llama `tokenizer.json` (Metaspace, `prepend_scheme: first`)
//!   differs from llama.cpp after special tokens and on leading spaces;
//!   and its merge list is not the score order llama.cpp uses. tpi follows
//!   llama.cpp.
//! - Not ported: llama.cpp promoting tokens to control by their text
//!   (`"<|eot_id|>"`, `"<|im_end|>"`, ... when the file says normal), the
//!   per-model lstrip/rstrip attributes (e.g. `"<mask>"`), `add_space_prefix`
//!   in "gpt2" vocabs (llama.cpp's BPE encoder ignores it too), and
//!   byte-level vocabs missing some of the 256 byte characters (HF drops
//!   such a character, llama.cpp emits single-byte tokens if present).
//!   Other models ("bert", "t5", "rwkv", ...) and pre types are errors.
//!
//! # Limits (the vocab comes from a file)
//!
//! At most [`MAX_TOKENS`] tokens of at most [`MAX_TOKEN_BYTES`] bytes and
//! [`MAX_MERGES`] merges; scores and types exactly one per token; every
//! merge `"a b"` names two tokens whose concatenation is a token; special
//! ids inside the vocab; no two tokens with the same text (llama.cpp
//! asserts the same). Empty tokens become `[EMPTY_<i>]` as in llama.cpp.
//! Each error names the index.

use super::spm::{Spm, SpmVocab};
use super::tokenizer::{Tokenizer, TokenizerError};
pub use super::vocab_error::VocabError;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Most tokens accepted (the largest real vocabularies, Gemma 3's, have
/// 262,144).
pub const MAX_TOKENS: usize = 1 << 20;
/// Longest token text accepted, in bytes (real ones are < 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 << 10;
/// Most merges accepted (real vocabs have about one per token).
pub const MAX_MERGES: usize = 2 * MAX_TOKENS;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The `tokenizer.ggml.*` metadata of a GGUF file. Absent keys are
/// `None`; a key of the wrong GGUF type is the parser's error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` (string): "llama" or "gpt2".
    pub model: String,
    /// `tokenizer.ggml.pre` (string): the pre-tokenizer of a "gpt2" vocab.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens` (string array), by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (f32 array; llama.cpp also reads an i32
    /// array, converted); needed by "llama".
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (i32 array, see [`token_type`]).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges` (string array, `"left right"`); needed by
    /// "gpt2".
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id` (u32).
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id` (u32).
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id` (u32).
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id` (u32; only range-checked).
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (bool); absent means llama.cpp's
    /// default: true for "llama" and the Llama 3 pre types.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token` (bool); absent means false.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (bool; "llama" only, default
    /// true).
    pub add_space_prefix: Option<bool>,
}

/// GPT-2's split regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_GPT2`).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's (llama.cpp's case-insensitive contractions spelled out).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek LLM's six regexes, applied one after the other (copied from
/// llama-vocab.cpp; U+3000 and U+D7FF written as escapes).
const DEEPSEEK_LLM_REGEXES: [&str; 6] = [
    "[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u{3000}-。]+",
    r"\s+$",
    "[一-龥ࠀ-一가-\u{D7FF}]+",
    r"\p{N}+",
];

/// llama.cpp's split regexes and `ignore_merges` for a "gpt2" pre type
/// (`llm_tokenizer_bpe`'s constructor and `llama_vocab::impl::load`).
fn pre_regexes(pre: &str) -> Result<(Vec<&'static str>, bool), VocabError> {
    Ok(match pre {
        "default" => (
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
        ),
        "gpt-2" => (vec![GPT2_REGEX], false),
        "llama3" | "llama-v3" | "llama-bpe" => (vec![LLAMA3_REGEX], true),
        "qwen2" | "deepseek-r1-qwen" => (vec![QWEN2_REGEX], false),
        "deepseek-llm" => (DEEPSEEK_LLM_REGEXES.to_vec(), false),
        other => return Err(VocabError::UnknownPre(other.to_string())),
    })
}

/// How a token takes part in text processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Normal, byte, unused, undefined: a model piece.
    Piece,
    /// Control or unknown: special, matched in text (parse_special).
    Special,
    /// User-defined: always matched in text, not special.
    UserDefined,
}

fn kind(index: usize, value: i32) -> Result<Kind, VocabError> {
    use token_type::*;
    match value {
        UNDEFINED | NORMAL | UNUSED | BYTE => Ok(Kind::Piece),
        UNKNOWN | CONTROL => Ok(Kind::Special),
        USER_DEFINED => Ok(Kind::UserDefined),
        _ => Err(VocabError::BadTokenType { index, value }),
    }
}

/// The vocabulary checked: token texts (empties renamed), kinds, lookup.
struct Checked {
    tokens: Vec<String>,
    kinds: Vec<Kind>,
    ids: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

fn check(v: &GgufVocab, llama: bool, default_add_bos: bool) -> Result<Checked, VocabError> {
    let n = v.tokens.len();
    if n == 0 {
        return Err(VocabError::NoTokens);
    }
    if n > MAX_TOKENS {
        return Err(VocabError::TooManyTokens { n, max: MAX_TOKENS });
    }
    let mut tokens = Vec::with_capacity(n);
    let mut ids = HashMap::with_capacity(n);
    for (index, t) in v.tokens.iter().enumerate() {
        if t.len() > MAX_TOKEN_BYTES {
            return Err(VocabError::TokenTooLong {
                index,
                len: t.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        // llama.cpp: "empty token at index i" becomes "[EMPTY_i]".
        let text = if t.is_empty() {
            format!("[EMPTY_{index}]")
        } else {
            t.clone()
        };
        if let Some(&first) = ids.get(&text) {
            return Err(VocabError::DuplicateToken {
                index,
                first: first as usize,
            });
        }
        ids.insert(text.clone(), index as u32);
        tokens.push(text);
    }
    let kinds = match &v.token_types {
        Some(types) => {
            if types.len() != n {
                return Err(VocabError::LengthMismatch {
                    what: "token_type",
                    len: types.len(),
                    n_tokens: n,
                });
            }
            types
                .iter()
                .enumerate()
                .map(|(i, &t)| kind(i, t))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => vec![Kind::Piece; n],
    };
    if let Some(scores) = &v.scores {
        if scores.len() != n {
            return Err(VocabError::LengthMismatch {
                what: "scores",
                len: scores.len(),
                n_tokens: n,
            });
        }
        if let Some(index) = scores.iter().position(|s| s.is_nan()) {
            return Err(VocabError::NanScore { index });
        }
    }
    // llama.cpp's defaults: "llama" bos 1, eos 2, unk 0; "gpt2" bos = eos
    // = 11; a default outside the vocab is dropped, an explicit one is an
    // error here (llama.cpp warns and keeps the default).
    let (bos_d, eos_d, unk_d) = if llama {
        (Some(1), Some(2), Some(0))
    } else {
        (Some(11), Some(11), None)
    };
    let special = |what, given: Option<u32>, default: Option<u32>| match given {
        Some(id) if id as usize >= n => Err(VocabError::SpecialOutOfRange {
            what,
            id,
            n_tokens: n,
        }),
        Some(id) => Ok(Some(id)),
        None => Ok(default.filter(|&id| (id as usize) < n)),
    };
    let bos = special("bos", v.bos, bos_d)?;
    let eos = special("eos", v.eos, eos_d)?;
    let unk = special("unknown", v.unk, unk_d)?;
    special("padding", v.pad, None)?;
    let add_bos = v.add_bos.unwrap_or(default_add_bos);
    let add_eos = v.add_eos.unwrap_or(false);
    if add_bos && bos.is_none() {
        return Err(VocabError::NoSpecial { what: "bos" });
    }
    if add_eos && eos.is_none() {
        return Err(VocabError::NoSpecial { what: "eos" });
    }
    Ok(Checked {
        tokens,
        kinds,
        ids,
        bos,
        eos,
        unk,
        add_bos,
        add_eos,
    })
}

/// Merges `"a b"` checked against the vocab, as tokenizer.json pairs.
/// llama.cpp splits at the first space after the first byte.
fn merges(v: &GgufVocab, c: &Checked) -> Result<Vec<Value>, VocabError> {
    let list = v.merges.as_ref().ok_or(VocabError::Missing("merges"))?;
    if list.len() > MAX_MERGES {
        return Err(VocabError::TooManyMerges {
            n: list.len(),
            max: MAX_MERGES,
        });
    }
    let mut out = Vec::with_capacity(list.len());
    for (index, m) in list.iter().enumerate() {
        let bad = |why| VocabError::BadMerge {
            index,
            merge: m.chars().take(64).collect(),
            why,
        };
        // A space byte is never inside a multi-byte character, so `at`
        // is a char boundary.
        let at = m
            .bytes()
            .skip(1)
            .position(|b| b == b' ')
            .map(|p| p + 1)
            .ok_or_else(|| bad("no space between the two parts"))?;
        let (a, b) = (&m[..at], &m[at + 1..]);
        if b.is_empty() {
            return Err(bad("empty right part"));
        }
        if !c.ids.contains_key(a) {
            return Err(bad("left part is not a token"));
        }
        if !c.ids.contains_key(b) {
            return Err(bad("right part is not a token"));
        }
        if !c.ids.contains_key(&format!("{a}{b}")) {
            return Err(bad("the merged text is not a token"));
        }
        out.push(json!([a, b]));
    }
    Ok(out)
}

/// tokenizer.json `added_tokens`: the special and user-defined tokens.
fn added_tokens(c: &Checked) -> Vec<Value> {
    c.tokens
        .iter()
        .zip(&c.kinds)
        .enumerate()
        .filter(|(_, (_, k))| **k != Kind::Piece)
        .map(|(id, (t, k))| {
            json!({
                "id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *k == Kind::Special,
            })
        })
        .collect()
}

/// tokenizer.json `post_processor`: BOS / EOS around the text, or null.
fn template(c: &Checked) -> Value {
    let mut single = Vec::new();
    let mut specials = Map::new();
    let mut special = |id: u32, out: &mut Vec<Value>| {
        let t = &c.tokens[id as usize];
        out.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    };
    if let (true, Some(bos)) = (c.add_bos, c.bos) {
        special(bos, &mut single);
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let (true, Some(eos)) = (c.add_eos, c.eos) {
        special(eos, &mut single);
    }
    if single.len() == 1 {
        return Value::Null;
    }
    let mut pair = single.clone();
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair,
           "special_tokens": specials})
}

fn vocab_map(c: &Checked) -> Map<String, Value> {
    c.tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect()
}

/// The in-memory tokenizer.json of a "gpt2" vocab.
fn gpt2_json(v: &GgufVocab) -> Result<Value, VocabError> {
    let pre = v.pre.as_deref().unwrap_or("default");
    let (regexes, ignore_merges) = pre_regexes(pre)?;
    let default_add_bos = ignore_merges; // llama.cpp: only the llama3 group
    let c = check(v, false, default_add_bos)?;
    let merges = merges(v, &c)?;
    let mut splits: Vec<Value> = regexes
        .iter()
        .map(|r| {
            json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated",
                   "invert": false})
        })
        .collect();
    splits.push(json!({"type": "ByteLevel", "add_prefix_space": false,
                       "trim_offsets": false, "use_regex": false}));
    Ok(json!({
        "version": "1.0",
        "added_tokens": added_tokens(&c),
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": splits},
        "post_processor": template(&c),
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                    "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": c.unk.map(|u| c.tokens[u as usize].clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab_map(&c), "merges": merges,
        },
    }))
}

/// The "llama" vocab: the tokenizer.json used for decoding, and the
/// encoder.
fn llama_parts(v: &GgufVocab) -> Result<(Value, Spm), VocabError> {
    let c = check(v, true, true)?;
    let scores = v.scores.as_ref().ok_or(VocabError::Missing("scores"))?;
    let add_space_prefix = v.add_space_prefix.unwrap_or(true);
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let tokenizer = json!({
        "version": "1.0",
        "added_tokens": added_tokens(&c),
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": template(&c),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": c.unk.map(|u| c.tokens[u as usize].clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_map(&c), "merges": [],
        },
    });
    let specials = c
        .tokens
        .iter()
        .zip(&c.kinds)
        .enumerate()
        .filter(|(_, (_, k))| **k != Kind::Piece)
        .map(|(id, (t, _))| (t.clone(), id as u32))
        .collect();
    let spm = Spm::new(SpmVocab {
        ids: c.ids,
        specials,
        scores,
        bos: c.bos,
        eos: c.eos,
        add_bos: c.add_bos,
        add_eos: c.add_eos,
        add_space_prefix,
    });
    Ok((tokenizer, spm))
}

impl Tokenizer {
    /// The tokenizer of a GGUF file's `tokenizer.ggml.*` metadata;
    /// `origin` names the file in errors.
    pub fn from_gguf_vocab(v: &GgufVocab, origin: &str) -> Result<Tokenizer, TokenizerError> {
        let vocab_err = |source| TokenizerError::Vocab {
            origin: origin.to_string(),
            source,
        };
        let (json, spm) = match v.model.as_str() {
            "gpt2" => (gpt2_json(v).map_err(vocab_err)?, None),
            "llama" => {
                let (json, spm) = llama_parts(v).map_err(vocab_err)?;
                (json, Some(spm))
            }
            other => return Err(vocab_err(VocabError::UnknownModel(other.to_string()))),
        };
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(json).map_err(|e| TokenizerError::Parse {
                origin: origin.to_string(),
                msg: e.to_string(),
            })?;
        Ok(Tokenizer::from_parts(inner, spm, origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level vocab: "a", "b", "ab", a control and a
    /// user-defined token.
    fn gpt2() -> GgufVocab {
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("qwen2".into()),
            tokens: ["a", "b", "ab", "Ġ", "<|eot|>", "<tool>"]
                .map(String::from)
                .to_vec(),
            token_types: Some(vec![1, 1, 1, 1, 3, 4]),
            merges: Some(vec!["a b".into()]),
            bos: Some(4),
            eos: Some(4),
            ..GgufVocab::default()
        }
    }

    /// A tiny SentencePiece vocab with byte tokens for every byte.
    fn llama() -> GgufVocab {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for t in ["▁", "h", "i", "hi", "▁hi"] {
            tokens.push(t.into());
            types.push(1);
        }
        let n = tokens.len();
        GgufVocab {
            model: "llama".into(),
            tokens,
            scores: Some((0..n).map(|i| -(i as f32)).collect()),
            token_types: Some(types),
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            ..GgufVocab::default()
        }
    }

    fn err(v: &GgufVocab) -> VocabError {
        match Tokenizer::from_gguf_vocab(v, "m.gguf") {
            Err(TokenizerError::Vocab { origin, source }) => {
                assert_eq!(origin, "m.gguf");
                source
            }
            Err(e) => panic!("not a vocab error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn small_vocabs_encode_and_decode() {
        let tok = Tokenizer::from_gguf_vocab(&gpt2(), "m.gguf").unwrap();
        // BOS is not added by default for qwen2; merges and specials work.
        assert_eq!(tok.encode("ab<|eot|>a<tool>").unwrap(), vec![2, 4, 0, 5]);
        assert_eq!(tok.decode(&[2, 3, 0, 4]).unwrap(), "ab a<|eot|>");
        let tok = Tokenizer::from_gguf_vocab(&llama(), "m.gguf").unwrap();
        let hi = tok.token_to_id("▁hi").unwrap();
        let ids = tok.encode("hi é").unwrap();
        // é is not a piece: its two UTF-8 bytes, as byte tokens.
        assert_eq!(
            ids,
            vec![1, hi, tok.token_to_id("▁").unwrap(), 3 + 0xC3, 3 + 0xA9]
        );
        assert_eq!(tok.decode(&ids).unwrap(), "<s> hi é");
        assert_eq!(tok.decode(&ids[1..]).unwrap(), "hi é");
        assert_eq!(tok.encode("").unwrap(), vec![1]);
        assert_eq!(tok.encode("<s>hi").unwrap(), vec![1, 1, hi]);
    }

    #[test]
    fn unknown_model_and_pre_are_errors_naming_them() {
        let mut v = gpt2();
        v.model = "t5".into();
        assert_eq!(err(&v), VocabError::UnknownModel("t5".into()));
        for pre in ["gpt2", "falcon", ""] {
            let mut v = gpt2();
            v.pre = Some(pre.into());
            let e = err(&v);
            assert_eq!(e, VocabError::UnknownPre(pre.into()));
            assert!(e.to_string().contains(&format!("\"{pre}\"")), "{e}");
        }
        // Absent: llama.cpp's "default" (with a warning there).
        let mut v = gpt2();
        v.pre = None;
        assert!(Tokenizer::from_gguf_vocab(&v, "m.gguf").is_ok());
    }

    #[test]
    fn token_list_limits() {
        let mut v = gpt2();
        v.tokens.clear();
        v.token_types = None;
        assert_eq!(err(&v), VocabError::NoTokens);
        let mut v = gpt2();
        v.tokens = vec!["x".into(); MAX_TOKENS + 1];
        v.token_types = None;
        let n = MAX_TOKENS + 1;
        assert_eq!(err(&v), VocabError::TooManyTokens { n, max: MAX_TOKENS });
        let mut v = gpt2();
        v.tokens[3] = "y".repeat(MAX_TOKEN_BYTES + 1);
        let (index, len, max) = (3, MAX_TOKEN_BYTES + 1, MAX_TOKEN_BYTES);
        assert_eq!(err(&v), VocabError::TokenTooLong { index, len, max });
        let mut v = gpt2();
        v.tokens[3] = "a".into();
        assert_eq!(err(&v), VocabError::DuplicateToken { index: 3, first: 0 });
        // Empty tokens are renamed as in llama.cpp, so two are distinct.
        let mut v = gpt2();
        v.tokens[3] = String::new();
        v.tokens[1] = String::new();
        v.merges = Some(vec![]);
        let tok = Tokenizer::from_gguf_vocab(&v, "m.gguf").unwrap();
        assert_eq!(tok.token_to_id("[EMPTY_3]"), Some(3));
    }

    #[test]
    fn per_token_arrays_must_match_the_token_count() {
        let mut v = gpt2();
        v.token_types = Some(vec![1; 5]);
        let e = err(&v);
        assert_eq!(
            e,
            VocabError::LengthMismatch {
                what: "token_type",
                len: 5,
                n_tokens: 6
            }
        );
        assert!(e.to_string().contains("5 entries for 6 tokens"), "{e}");
        let mut v = llama();
        v.scores.as_mut().unwrap().push(0.0);
        assert!(matches!(
            err(&v),
            VocabError::LengthMismatch { what: "scores", .. }
        ));
        let mut v = llama();
        v.scores.as_mut().unwrap()[7] = f32::NAN;
        assert_eq!(err(&v), VocabError::NanScore { index: 7 });
        let mut v = gpt2();
        v.token_types.as_mut().unwrap()[2] = 9;
        assert_eq!(err(&v), VocabError::BadTokenType { index: 2, value: 9 });
        let mut v = llama();
        v.scores = None;
        assert_eq!(err(&v), VocabError::Missing("scores"));
        let mut v = gpt2();
        v.merges = None;
        assert_eq!(err(&v), VocabError::Missing("merges"));
    }

    #[test]
    fn bad_merges_are_errors_naming_the_index() {
        for (merge, why) in [
            ("ab", "no space between the two parts"),
            (" a", "no space between the two parts"),
            ("a ", "empty right part"),
            ("x b", "left part is not a token"),
            ("a x", "right part is not a token"),
            ("b a", "the merged text is not a token"),
        ] {
            let mut v = gpt2();
            v.merges = Some(vec!["a b".into(), merge.into()]);
            let e = err(&v);
            assert_eq!(
                e,
                VocabError::BadMerge {
                    index: 1,
                    merge: merge.into(),
                    why
                }
            );
            assert!(e.to_string().starts_with("merge 1 "), "{e}");
        }
        let mut v = gpt2();
        v.merges = Some(vec!["a b".into(); MAX_MERGES + 1]);
        assert!(matches!(err(&v), VocabError::TooManyMerges { .. }));
    }

    #[test]
    fn special_ids_must_be_in_the_vocab() {
        for what in ["bos", "eos", "unknown", "padding"] {
            let mut v = gpt2();
            match what {
                "bos" => v.bos = Some(6),
                "eos" => v.eos = Some(6),
                "unknown" => v.unk = Some(6),
                _ => v.pad = Some(u32::MAX),
            }
            let e = err(&v);
            assert!(
                matches!(e, VocabError::SpecialOutOfRange { what: w, .. } if w == what),
                "{e}"
            );
            let full = TokenizerError::Vocab {
                origin: "m.gguf".into(),
                source: e,
            };
            assert!(
                full.to_string().starts_with("m.gguf: invalid GGUF"),
                "{full}"
            );
        }
        // llama.cpp's default ("gpt2" bos 11) is outside: with add_bos that
        // is an error, without it the default is just dropped.
        let mut v = gpt2();
        v.bos = None;
        v.add_bos = Some(true);
        assert_eq!(err(&v), VocabError::NoSpecial { what: "bos" });
        v.add_bos = None;
        assert!(Tokenizer::from_gguf_vocab(&v, "m.gguf").is_ok());
        let mut v = llama();
        v.eos = None;
        v.tokens.truncate(2); // default eos 2 is then outside
        v.scores.as_mut().unwrap().truncate(2);
        v.token_types.as_mut().unwrap().truncate(2);
        v.add_eos = Some(true);
        assert_eq!(err(&v), VocabError::NoSpecial { what: "eos" });
    }

    #[test]
    fn spm_byte_without_token_is_an_encode_error() {
        let mut v = llama();
        // Drop the byte tokens: "é" has no piece and no byte fallback.
        v.tokens.drain(3..259);
        v.scores.as_mut().unwrap().drain(3..259);
        v.token_types.as_mut().unwrap().drain(3..259);
        let tok = Tokenizer::from_gguf_vocab(&v, "m.gguf").unwrap();
        let e = tok.encode("hé").unwrap_err();
        assert!(e.to_string().contains("byte 0xC3 has no token"), "{e}");
        assert!(e.to_string().starts_with("m.gguf"), "{e}");
        assert!(tok.encode("hi").is_ok());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Token texts from a small alphabet (so merges and specials hit),
        /// with the vocab's spellings of bytes and spaces.
        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                "[ab<>|/é🙂 ▁Ġ]{0,4}",
                (0u8..=255).prop_map(|b| format!("<0x{b:02X}>")),
            ]
        }

        proptest! {
            #[test]
            fn never_panics_on_random_vocabs(
                llama in any::<bool>(),
                entries in proptest::collection::btree_map(
                    token(),
                    (0i32..7, -5.0f32..5.0),
                    1..40,
                ),
                pairs in proptest::collection::vec((0usize..40, 0usize..40), 0..30),
                junk in proptest::option::of("[ab<>|é▁Ġ ]{0,5}"),
                bad_type in proptest::option::of((0usize..40, -2i32..9)),
                ids in proptest::collection::vec(proptest::option::of(0u32..45), 4),
                flags in proptest::collection::vec(proptest::option::of(any::<bool>()), 3),
                pre in prop_oneof![Just("qwen2"), Just("default"), Just("deepseek-llm"), Just("x")],
                text in "[ab<>|/é🙂 ▁Ġ\n]{0,24}",
            ) {
                let tokens: Vec<String> = entries.keys().cloned().collect();
                let n = tokens.len();
                // Merges of two tokens (valid when the concatenation is one
                // too), maybe one of junk.
                let mut merges: Vec<String> = pairs
                    .iter()
                    .map(|&(a, b)| format!("{} {}", tokens[a % n], tokens[b % n]))
                    .filter(|m| {
                        m.split_once(' ')
                            .is_some_and(|(a, b)| entries.contains_key(&format!("{a}{b}")))
                    })
                    .collect();
                merges.extend(junk);
                let v = GgufVocab {
                    model: if llama { "llama" } else { "gpt2" }.into(),
                    pre: Some(pre.into()),
                    scores: Some(entries.values().map(|e| e.1).collect()),
                    token_types: Some(entries.values().map(|e| e.0).collect()),
                    // Ids mostly inside the vocab.
                    bos: ids[0].map(|i| i % (n as u32 + 2)),
                    eos: ids[1].map(|i| i % (n as u32 + 2)),
                    unk: ids[2].map(|i| i % (n as u32 + 2)),
                    pad: ids[3].map(|i| i % (n as u32 + 2)),
                    tokens,
                    merges: Some(merges),
                    add_bos: flags[0],
                    add_eos: flags[1],
                    add_space_prefix: flags[2],
                };
                let mut v = v;
                if let (Some((i, t)), Some(types)) = (bad_type, v.token_types.as_mut()) {
                    types[i % n] = t;
                }
                if let Ok(tok) = Tokenizer::from_gguf_vocab(&v, "p") {
                    if let Ok(ids) = tok.encode(&text) {
                        let _ = tok.decode(&ids);
                        let mut s = tok.stream(&[]);
                        for id in ids {
                            let _ = s.push(id);
                        }
                        let _ = s.flush();
                    }
                }
            }
        }
    }
}
