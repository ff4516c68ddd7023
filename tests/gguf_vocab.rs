//! Tokenizers built from GGUF metadata against llama.cpp: each fixture in
//! tests/fixtures/gguf_vocab (written by tools/gguf_vocab_fixture.py) holds
//! a vocab-only GGUF's `tokenizer.ggml.*` values and llama.cpp's ids and
//! decoded text for a set of strings.

use crate::common::{fixture_dir, ids};
use serde_json::Value;
use tpi::model::gguf_vocab::GgufVocab;
use tpi::model::tokenizer::Tokenizer;

/// Fixtures made from the HF fixtures of the same name by llama.cpp's
/// converter (they also record the HF tokenizer.json's ids).
const CONVERTED: [&str; 3] = ["stories260K", "llama-mha-f32", "llama-gqa-bf16"];
/// A byte-level BPE trained by the fixture tool, once per pre type, and
/// the stories260K vocab edited: distinct scores, user-defined and extra
/// control tokens, and again without space prefix and with EOS.
const MADE: [&str; 7] = [
    "trained-qwen2",
    "trained-llama-bpe",
    "trained-gpt-2",
    "trained-deepseek-llm",
    "trained-default",
    "stories260K-scored",
    "stories260K-noprefix",
];

fn load(name: &str) -> Value {
    let path = fixture_dir("gguf_vocab").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
}

fn vocab(v: &Value) -> GgufVocab {
    let id = |k: &str| v[k].as_u64().map(|x| x as u32);
    let flag = |k: &str| v[k].as_bool();
    GgufVocab {
        model: v["model"].as_str().unwrap().to_string(),
        pre: v["pre"].as_str().map(str::to_string),
        tokens: strings(&v["tokens"]).unwrap(),
        scores: v["scores"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_f64().unwrap() as f32).collect()),
        token_types: v["token_types"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_i64().unwrap() as i32).collect()),
        merges: strings(&v["merges"]),
        bos: id("bos"),
        eos: id("eos"),
        unk: id("unk"),
        pad: id("pad"),
        add_bos: flag("add_bos"),
        add_eos: flag("add_eos"),
        add_space_prefix: flag("add_space_prefix"),
    }
}

fn tokenizer(name: &str) -> (Tokenizer, Value) {
    let f = load(name);
    let tok = Tokenizer::from_gguf_vocab(&vocab(&f["vocab"]), name).unwrap();
    (tok, f)
}

/// llama.cpp cleans up spaces before punctuation on decode for these pre
/// types (`clean_spaces`); tpi (like HF without clean-up) does not, and
/// that is the only difference.
fn cleans_spaces(f: &Value) -> bool {
    f["vocab"]["model"] == "gpt2"
        && matches!(
            f["vocab"]["pre"].as_str(),
            Some("default" | "gpt-2" | "llama-bpe")
        )
}

#[test]
fn gguf_vocab_encode_matches_llamacpp() {
    for name in CONVERTED.iter().chain(&MADE) {
        let (tok, f) = tokenizer(name);
        let mut bad = Vec::new();
        let cases = f["cases"].as_array().unwrap();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want = ids(&c["ids"]);
            let got = tok.encode(text).unwrap();
            if got != want {
                bad.push(format!(
                    "{text:?}\n  llama.cpp {want:?}\n  tpi       {got:?}"
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{name}: {} of {} strings differ; first:\n{}",
            bad.len(),
            cases.len(),
            bad[..bad.len().min(4)].join("\n")
        );
    }
}

#[test]
fn gguf_vocab_decode_matches_llamacpp() {
    for name in CONVERTED.iter().chain(&MADE) {
        let (tok, f) = tokenizer(name);
        let mut n_round_trips = 0;
        let mut n_cleaned = 0;
        for c in f["cases"].as_array().unwrap() {
            let text = c["text"].as_str().unwrap();
            let all = ids(&c["ids"]);
            let decoded = tok.decode(&all).unwrap();
            let want = c["decoded"].as_str().unwrap();
            if cleans_spaces(&f) {
                n_cleaned += usize::from(decoded != want);
                assert_eq!(clean_spaces(&decoded), want, "{name}: {text:?}");
            } else {
                assert_eq!(decoded, want, "{name}: {text:?}");
            }
            // Without BOS / EOS, and the round trip where it holds in
            // llama.cpp.
            // (`ids` is BOS if add_bos, these, EOS if add_eos.)
            let plain = ids(&c["plain_ids"]);
            let v = &f["vocab"];
            let head = usize::from(v["add_bos"] == true);
            let tail = usize::from(v["add_eos"] == true);
            assert_eq!(&all[head..all.len() - tail], plain, "{name}: {text:?}");
            if c["round_trip"].as_bool().unwrap() {
                assert_eq!(tok.decode(&plain).unwrap(), text, "{name}: round trip");
                n_round_trips += 1;
            }
        }
        assert!(n_round_trips > 20, "{name}: {n_round_trips} round trips");
        assert_eq!(
            n_cleaned > 0,
            cleans_spaces(&f),
            "{name}: {n_cleaned} cleaned"
        );
    }
}

/// llama.cpp's `clean_spaces` passes on decoded text (`detokenize`): no
/// space before `?!.,`; `" ' "` becomes `'`; no space before `'s`, `'m`,
/// `'re`, `'ve`.
fn clean_spaces(text: &str) -> String {
    let mut s = text.to_string();
    for p in ["?", "!", ".", ","] {
        s = s.replace(&format!(" {p}"), p);
    }
    s = s.replace(" ' ", "'");
    for c in ["'s", "'m", "'re", "'ve"] {
        s = s.replace(&format!(" {c}"), c);
    }
    s
}

/// The stream decoder emits what decode gives, byte-fallback characters
/// whole.
#[test]
fn gguf_vocab_stream_decode_matches_decode() {
    for name in CONVERTED.iter().chain(&MADE) {
        let (tok, f) = tokenizer(name);
        for c in f["cases"].as_array().unwrap() {
            let all = ids(&c["ids"]);
            if all.len() < 2 {
                continue;
            }
            let mut s = tok.stream(&all[..1]);
            let mut pieces = String::new();
            for &id in &all[1..] {
                let p = s.push(id).unwrap();
                assert!(!p.contains('\u{FFFD}'), "{name}: {p:?}");
                pieces.push_str(&p);
            }
            pieces.push_str(&s.flush().unwrap());
            let whole = tok.decode(&all).unwrap();
            let head = tok.decode(&all[..1]).unwrap();
            assert_eq!(format!("{head}{pieces}"), whole, "{name}");
        }
    }
}

/// Where the HF tokenizer.json gives llama.cpp's ids, tpi's GGUF tokenizer
/// and its tokenizer.json tokenizer agree too; the strings where HF and
/// llama.cpp differ are all in the SentencePiece fixture (see gguf_vocab's
/// module doc).
#[test]
fn gguf_vocab_agrees_with_hf_where_llamacpp_does() {
    let mut n_differ = Vec::new();
    for name in CONVERTED {
        let (tok, f) = tokenizer(name);
        let hf = Tokenizer::from_file(&fixture_dir(name).join("tokenizer.json")).unwrap();
        let mut n = 0;
        for c in f["cases"].as_array().unwrap() {
            let text = c["text"].as_str().unwrap();
            let hf_ids = ids(&c["hf_ids"]);
            assert_eq!(hf.encode(text).unwrap(), hf_ids, "{name}: {text:?}");
            if hf_ids == ids(&c["ids"]) {
                assert_eq!(tok.encode(text).unwrap(), hf_ids, "{name}: {text:?}");
            } else {
                n += 1;
            }
        }
        n_differ.push((name, n));
    }
    assert_eq!(
        n_differ,
        [
            ("stories260K", 17),
            ("llama-mha-f32", 0),
            ("llama-gqa-bf16", 0)
        ]
    );
}

/// The pre type decides the split: the trained vocab under another pre
/// type's regexes gives other ids for some strings (so each fixture tests
/// its own regexes).
#[test]
fn gguf_vocab_pre_type_changes_ids() {
    let pres = ["qwen2", "llama-bpe", "gpt-2", "deepseek-llm", "default"];
    for pre in pres {
        let f = load(&format!("trained-{pre}"));
        for other in pres.iter().filter(|&&o| o != pre) {
            let mut v = vocab(&f["vocab"]);
            v.pre = Some(other.to_string());
            let tok = Tokenizer::from_gguf_vocab(&v, other).unwrap();
            let n_differ = f["cases"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| tok.encode(c["text"].as_str().unwrap()).unwrap() != ids(&c["ids"]))
                .count();
            assert!(n_differ > 0, "{pre} vs {other}");
        }
    }
}
