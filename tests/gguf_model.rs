//! A GGUF file as a tpi model (`tpi::model::gguf_model`, rules M1..M8 in
//! its module docs): llama.cpp's own converter is the oracle. The f32 GGUF
//! it writes for an HF fixture (`tools/gguf_model_fixture.py`) resolves to
//! the Config of that fixture's config.json, and every tensor, with q/k
//! rows put back through `QkPermutation`, is the HF tensor bit for bit.
//! Crafted headers (the GGUF writer of `tests/gguf.rs`) reach every error,
//! each naming the file and the key or tensor; a property test checks the
//! permutation is a bijection and its inverse.

use proptest::prelude::*;
use tpi::model::config::{Arch, Config, RopeScaling};
use tpi::model::dtype::{widen, WeightType};
use tpi::model::gguf::{Array, GgmlType, Gguf, StringArray, TensorInfo, Value};
use tpi::model::gguf_model::{
    config, rope_inv_freq, GgufModel, GgufModelError, QkPermutation, ROPE_FREQS,
};
use tpi::model::names;
use tpi::model::safetensors::SafeTensors;
use tpi::split::manifest::Role;

use crate::common::{fixture_dir, FIXTURES};
use crate::gguf::Writer;

// ---------------------------------------------------------------------------
// Oracle: llama.cpp's convert_hf_to_gguf.py

/// The HF name of a mapped role.
fn hf_name(role: Role, layer: Option<usize>) -> String {
    let leaf = match role {
        Role::Embedding => return names::EMBED.to_string(),
        Role::LmHead => return names::LM_HEAD.to_string(),
        Role::FinalNorm => return names::FINAL_NORM.to_string(),
        Role::Q => "self_attn.q_proj.weight",
        Role::K => "self_attn.k_proj.weight",
        Role::V => "self_attn.v_proj.weight",
        Role::O => "self_attn.o_proj.weight",
        Role::Gate => "mlp.gate_proj.weight",
        Role::Up => "mlp.up_proj.weight",
        Role::Down => "mlp.down_proj.weight",
        Role::AttnNorm => names::ATTN_NORM,
        Role::FfnNorm => names::FFN_NORM,
        Role::QBias => names::Q_BIAS,
        Role::KBias => names::K_BIAS,
        Role::VBias => names::V_BIAS,
    };
    names::layer_name(layer.expect("a layer role has a layer"), leaf)
}

/// A tensor's bytes in a whole GGUF file, by the reader's offsets.
fn tensor_bytes<'a>(file: &'a [u8], t: &TensorInfo) -> &'a [u8] {
    &file[t.offset as usize..][..t.len as usize]
}

/// Tiny HF models made for this test (`tools/gguf_model_fixture.py`),
/// under `tests/fixtures/gguf_model/`.
const TINY: [&str; 2] = ["qwen2-tiny", "llama-bias-tiny"];
/// The conversions committed; the other fixtures' are checked when made.
const COMMITTED: [&str; 3] = ["stories260K", "qwen2-tiny", "llama-bias-tiny"];

/// Checks the converted GGUF of fixture `name` against its HF files;
/// false when the GGUF has not been written.
fn check_fixture(name: &str) -> bool {
    let gguf_dir = fixture_dir("gguf_model");
    let path = gguf_dir.join(format!("{name}.gguf"));
    let hf_dir = if TINY.contains(&name) {
        gguf_dir.join(name)
    } else {
        fixture_dir(name)
    };
    if !path.exists() {
        assert!(
            !COMMITTED.contains(&name),
            "{name}: committed fixture missing"
        );
        eprintln!(
            "{}: not written (tools/gguf_model_fixture.py), skipped",
            path.display()
        );
        return false;
    }
    let gguf = Gguf::open(&path).unwrap();
    let model = GgufModel::from_gguf(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
    let hf = Config::from_dir(&hf_dir).unwrap();
    let c = &model.config;

    // Field by field. GGUF carries no torch dtype and one end token
    // (tokenizer.ggml.eos_token_id; generation_config.json may list more).
    assert_eq!(c.arch, hf.arch, "{name}: arch");
    assert_eq!(c.dim, hf.dim, "{name}: dim");
    assert_eq!(c.hidden_dim, hf.hidden_dim, "{name}: hidden_dim");
    assert_eq!(c.n_layers, hf.n_layers, "{name}: n_layers");
    assert_eq!(c.n_heads, hf.n_heads, "{name}: n_heads");
    assert_eq!(c.n_kv_heads, hf.n_kv_heads, "{name}: n_kv_heads");
    assert_eq!(c.head_dim, hf.head_dim, "{name}: head_dim");
    assert_eq!(c.vocab_size, hf.vocab_size, "{name}: vocab_size");
    assert_eq!(c.max_seq_len, hf.max_seq_len, "{name}: max_seq_len");
    assert_eq!(c.norm_eps, hf.norm_eps, "{name}: norm_eps");
    assert_eq!(c.rope_theta, hf.rope_theta, "{name}: rope_theta");
    assert_eq!(c.tie_embeddings, hf.tie_embeddings, "{name}: tie");
    assert_eq!(c.attention_bias, hf.attention_bias, "{name}: bias");
    assert_eq!(c.bos_token_id, hf.bos_token_id, "{name}: bos");
    assert!(
        !c.eos_token_ids.is_empty() && c.eos_token_ids.iter().all(|e| hf.eos_token_ids.contains(e)),
        "{name}: eos {:?} not among {:?}",
        c.eos_token_ids,
        hf.eos_token_ids
    );
    assert_eq!(c.torch_dtype, None);

    // RoPE: llama3 scaling arrives as rope_freqs divisors (M5).
    let bytes = std::fs::read(&path).unwrap();
    let data = |t: &TensorInfo| tensor_bytes(&bytes, t);
    match &hf.rope_scaling {
        RopeScaling::Llama3 { .. } => {
            assert_eq!(c.rope_scaling, RopeScaling::None, "{name}");
            let t = model.rope_freqs.as_ref().expect("rope_freqs.weight");
            let got = rope_inv_freq(c, data(t), name).unwrap();
            let want = hf.rope_inv_freq();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs(),
                    "{name}: inv_freq {i}: {g} vs {w}"
                );
            }
        }
        s => {
            assert_eq!(&c.rope_scaling, s, "{name}");
            assert!(model.rope_freqs.is_none(), "{name}");
        }
    }

    // Tensors: every HF tensor once, equal after un-permuting q/k rows.
    let st = SafeTensors::open_dir(&hf_dir).unwrap();
    assert_eq!(
        model.tensors.len(),
        st.tensors().count(),
        "{name}: tensor count"
    );
    assert_eq!(model.get(Role::LmHead, None).is_none(), hf.tie_embeddings);
    let mut permuted_rows = 0;
    for m in &model.tensors {
        let hn = hf_name(m.role, m.layer);
        let ht = st.tensor(&hn).unwrap();
        let want_shape = if m.info.dims.len() == 1 {
            vec![m.cols]
        } else {
            vec![m.rows, m.cols]
        };
        assert_eq!(ht.shape, want_shape, "{name}: {hn}");
        assert_eq!(m.wtype, WeightType::F32, "{}", m.info.name);
        let hf_vals = widen(ht.dtype, st.bytes(ht));
        let g_vals = widen(tpi::model::dtype::Dtype::F32, data(&m.info));
        // A vector is one row of elements, but a permuted bias moves its
        // elements: view it as `cols` rows of 1.
        let (rows, cols) = match (m.rows, m.permutation) {
            (1, Some(_)) => (m.cols, 1),
            _ => (m.rows, m.cols),
        };
        for r in 0..rows {
            let hr = match m.permutation {
                Some(p) => p.hf_row(r).unwrap(),
                None => r,
            };
            permuted_rows += usize::from(hr != r);
            let g = &g_vals[r * cols..][..cols];
            let h = &hf_vals[hr * cols..][..cols];
            let same = g.iter().zip(h).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{name}: {} row {r} (HF row {hr}) differs",
                m.info.name
            );
        }
        let expect_perm = matches!(m.role, Role::Q | Role::K | Role::QBias | Role::KBias)
            && c.arch == Arch::Llama;
        assert_eq!(m.permutation.is_some(), expect_perm, "{}", m.info.name);
    }
    // llama: the converter moved q/k rows; qwen2: it did not, and the
    // tensors above matched in HF order.
    assert_eq!(
        permuted_rows > 0,
        c.arch == Arch::Llama,
        "{name}: permuted rows"
    );
    true
}

#[test]
fn llamacpp_conversions_resolve_to_the_hf_config_and_tensors() {
    let checked: Vec<&str> = FIXTURES
        .into_iter()
        .chain(TINY)
        .filter(|name| check_fixture(name))
        .collect();
    assert!(COMMITTED.iter().all(|c| checked.contains(c)), "{checked:?}");
}

// ---------------------------------------------------------------------------
// Crafted headers: every error names the file and the key or tensor.

const DIM: u64 = 32;
const FF: u64 = 64;
const HEADS: u64 = 2;
const KV: u64 = 1;
const HD: u64 = 16;
const VOCAB: u64 = 10;

/// A header as pairs and tensor infos, edited before it is written.
#[derive(Clone)]
struct Spec {
    kvs: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

impl Spec {
    /// A valid one-layer model of `arch` (qwen2 with its biases).
    fn new(arch: &str) -> Spec {
        let k = |s: &str| format!("{arch}.{s}");
        let kvs = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (k("block_count"), Value::U32(1)),
            (k("context_length"), Value::U32(128)),
            (k("embedding_length"), Value::U32(DIM as u32)),
            (k("feed_forward_length"), Value::U32(FF as u32)),
            (k("attention.head_count"), Value::U32(HEADS as u32)),
            (k("attention.head_count_kv"), Value::U32(KV as u32)),
            (k("rope.freq_base"), Value::F32(10000.0)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            (k("vocab_size"), Value::U32(VOCAB as u32)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ];
        let f = GgmlType::F32;
        let mut tensors = vec![
            ("token_embd.weight".into(), vec![DIM, VOCAB], f),
            ("output_norm.weight".into(), vec![DIM], f),
            ("output.weight".into(), vec![DIM, VOCAB], f),
            ("blk.0.attn_norm.weight".into(), vec![DIM], f),
            ("blk.0.attn_q.weight".into(), vec![DIM, HEADS * HD], f),
            ("blk.0.attn_k.weight".into(), vec![DIM, KV * HD], f),
            ("blk.0.attn_v.weight".into(), vec![DIM, KV * HD], f),
            ("blk.0.attn_output.weight".into(), vec![HEADS * HD, DIM], f),
            ("blk.0.ffn_norm.weight".into(), vec![DIM], f),
            ("blk.0.ffn_gate.weight".into(), vec![DIM, FF], f),
            ("blk.0.ffn_up.weight".into(), vec![DIM, FF], f),
            ("blk.0.ffn_down.weight".into(), vec![FF, DIM], f),
        ];
        if arch == "qwen2" {
            tensors.push(("blk.0.attn_q.bias".into(), vec![HEADS * HD], f));
            tensors.push(("blk.0.attn_k.bias".into(), vec![KV * HD], f));
            tensors.push(("blk.0.attn_v.bias".into(), vec![KV * HD], f));
        }
        Spec { kvs, tensors }
    }

    fn set(mut self, key: &str, v: Value) -> Spec {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.into(), v));
        self
    }

    fn drop_key(mut self, key: &str) -> Spec {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], t: GgmlType) -> Spec {
        self.tensors.retain(|(n, ..)| n != name);
        self.tensors.push((name.into(), dims.to_vec(), t));
        self
    }

    fn drop_tensor(mut self, name: &str) -> Spec {
        self.tensors.retain(|(n, ..)| n != name);
        self
    }

    fn gguf(&self) -> Gguf {
        let mut w = Writer::new(3);
        for (k, v) in &self.kvs {
            w.kv(k, v.clone());
        }
        for (n, dims, t) in &self.tensors {
            w.tensor_filled(n, dims, *t, 0);
        }
        Gguf::from_bytes(&w.bytes(), "m.gguf").unwrap()
    }

    fn model(&self) -> Result<GgufModel, GgufModelError> {
        GgufModel::from_gguf(&self.gguf())
    }

    /// The error, which must name the file and every one of `names`.
    fn err(&self, names: &[&str]) -> GgufModelError {
        let e = self.model().expect_err("bad model accepted");
        let s = e.to_string();
        assert!(s.starts_with("m.gguf: "), "{s}");
        for n in names {
            assert!(s.contains(n), "{s} does not name {n}");
        }
        e
    }
}

#[test]
fn crafted_llama_and_qwen2_resolve() {
    let m = Spec::new("llama").model().unwrap();
    let c = &m.config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (
            c.dim,
            c.hidden_dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim
        ),
        (32, 64, 1, 2, 1, 16)
    );
    assert_eq!((c.vocab_size, c.max_seq_len), (10, 128));
    assert_eq!((c.norm_eps, c.rope_theta), (1e-6, 10000.0));
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert!(!c.tie_embeddings && !c.attention_bias);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(m.tensors.len(), 12);
    let q = m.get(Role::Q, Some(0)).unwrap();
    assert_eq!((q.rows, q.cols), (32, 32));
    assert_eq!(q.permutation, QkPermutation::new(2, 16));
    let k = m.get(Role::K, Some(0)).unwrap();
    assert_eq!((k.rows, k.cols), (16, 32));
    assert_eq!(k.permutation, QkPermutation::new(1, 16));
    assert_eq!(m.get(Role::V, Some(0)).unwrap().permutation, None);
    let down = m.get(Role::Down, Some(0)).unwrap();
    assert_eq!((down.rows, down.cols), (32, 64));

    let q2 = Spec::new("qwen2").model().unwrap();
    assert_eq!(q2.config.arch, Arch::Qwen2);
    assert!(q2.config.attention_bias);
    assert_eq!(q2.tensors.len(), 15);
    assert!(q2.tensors.iter().all(|t| t.permutation.is_none()));

    // Llama with biases: q and k biases are permuted like their rows.
    let mut s = Spec::new("llama");
    for (b, n) in [("q", HEADS * HD), ("k", KV * HD), ("v", KV * HD)] {
        s = s.tensor(&format!("blk.0.attn_{b}.bias"), &[n], GgmlType::F32);
    }
    let m = s.model().unwrap();
    assert!(m.config.attention_bias);
    assert_eq!(
        m.get(Role::KBias, Some(0)).unwrap().permutation,
        QkPermutation::new(1, 16)
    );
}

#[test]
fn defaults_ties_vocab_and_quantized_types() {
    let s = Spec::new("llama")
        .drop_key("llama.attention.head_count_kv")
        .drop_key("llama.rope.freq_base")
        .drop_key("llama.vocab_size")
        .drop_tensor("output.weight")
        .drop_tensor("blk.0.attn_k.weight")
        .drop_tensor("blk.0.attn_v.weight")
        .tensor("blk.0.attn_k.weight", &[DIM, HEADS * HD], GgmlType::F32)
        .tensor("blk.0.attn_v.weight", &[DIM, HEADS * HD], GgmlType::Q8_0)
        .tensor("blk.0.ffn_up.weight", &[DIM, FF], GgmlType::Q4_0);
    let m = s.model().unwrap();
    assert_eq!(m.config.n_kv_heads, 2);
    assert_eq!(m.config.rope_theta, 10000.0);
    assert_eq!(m.config.vocab_size, 10, "from token_embd");
    assert!(m.config.tie_embeddings);
    assert!(m.get(Role::LmHead, None).is_none());
    assert_eq!(m.get(Role::V, Some(0)).unwrap().wtype, WeightType::Q8_0);
    assert_eq!(m.get(Role::Up, Some(0)).unwrap().wtype, WeightType::Q4_0);

    let mut tokens = StringArray::new();
    (0..VOCAB).for_each(|i| tokens.push(&format!("t{i}")));
    let s = Spec::new("llama")
        .drop_key("llama.vocab_size")
        .set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    assert_eq!(s.model().unwrap().config.vocab_size, 10, "from tokens");

    let s = Spec::new("llama").set("llama.attention.key_length", Value::U32(8));
    let e = s.err(&["blk.0.attn_q.weight", "[32, 32]", "[32, 16]"]);
    assert!(matches!(e, GgufModelError::Shape { .. }), "{e}");

    let s = Spec::new("llama")
        .set("llama.rope.scaling.type", Value::String("linear".into()))
        .set("llama.rope.scaling.factor", Value::F32(4.0));
    assert_eq!(
        s.model().unwrap().config.rope_scaling,
        RopeScaling::Linear { factor: 4.0 }
    );
    let s = Spec::new("llama").set("llama.rope.scaling.factor", Value::F32(2.0));
    assert_eq!(
        s.model().unwrap().config.rope_scaling,
        RopeScaling::Linear { factor: 2.0 }
    );
    let s = Spec::new("llama")
        .set("llama.rope.scaling.type", Value::String("none".into()))
        .set("llama.rope.scaling.factor", Value::F32(1.0));
    assert_eq!(s.model().unwrap().config.rope_scaling, RopeScaling::None);
}

#[test]
fn missing_and_mistyped_keys_name_the_key() {
    for key in [
        "general.architecture",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.layer_norm_rms_epsilon",
    ] {
        let e = Spec::new("llama").drop_key(key).err(&[key, "missing"]);
        assert!(matches!(e, GgufModelError::Gguf(_)), "{e}");
        Spec::new("llama")
            .set(key, Value::Array(Array::U8(vec![1])))
            .err(&[key, "expected"]);
    }
    Spec::new("llama")
        .set("llama.block_count", Value::I32(-1))
        .err(&["llama.block_count", "i32 -1"]);
    Spec::new("llama")
        .set("tokenizer.ggml.bos_token_id", Value::String("x".into()))
        .err(&["tokenizer.ggml.bos_token_id"]);
    Spec::new("llama")
        .drop_key("llama.vocab_size")
        .drop_tensor("token_embd.weight")
        .err(&[
            "llama.vocab_size",
            "tokenizer.ggml.tokens",
            "token_embd.weight",
        ]);
    Spec::new("llama")
        .set("llama.rope.scaling.type", Value::String("linear".into()))
        .err(&["llama.rope.scaling.factor", "missing"]);
}

#[test]
fn values_the_hf_check_refuses_name_the_gguf_key() {
    for (key, v) in [
        ("llama.block_count", Value::U32(100_000)),
        ("llama.block_count", Value::U32(0)),
        ("llama.embedding_length", Value::U64(1 << 40)),
        ("llama.attention.head_count", Value::U32(0)),
        ("llama.attention.head_count_kv", Value::U32(3)),
        ("llama.attention.key_length", Value::U32(7)),
        ("llama.context_length", Value::U32(0)),
        ("llama.vocab_size", Value::U32(1 << 30)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(-1.0)),
        ("llama.rope.freq_base", Value::F32(0.5)),
        ("llama.rope.scaling.factor", Value::F32(1e9)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
        ),
        ("llama.rope.freq_base", Value::F32(f32::INFINITY)),
        ("llama.rope.scaling.factor", Value::F32(f32::NAN)),
    ] {
        let e = Spec::new("llama").set(key, v).err(&[key]);
        assert!(matches!(e, GgufModelError::Config(_)), "{key}: {e}");
    }
    // No key_length and a dim heads do not divide.
    Spec::new("llama")
        .set("llama.attention.head_count", Value::U32(3))
        .set("llama.attention.head_count_kv", Value::U32(3))
        .err(&["llama.attention.head_count", "not a multiple"]);
}

#[test]
fn unsupported_features_are_named() {
    let e = Spec::new("gpt2").err(&["gpt2", "architecture"]);
    assert!(
        matches!(e, GgufModelError::UnsupportedArchitecture { .. }),
        "{e}"
    );
    Spec::new("llama")
        .set("llama.rope.scaling.type", Value::String("yarn".into()))
        .set("llama.rope.scaling.factor", Value::F32(4.0))
        .err(&["yarn", "llama.rope.scaling.type"]);
    Spec::new("llama")
        .set("llama.rope.scaling.type", Value::String("none".into()))
        .set("llama.rope.scaling.factor", Value::F32(4.0))
        .err(&["llama.rope.scaling.factor"]);
    Spec::new("llama")
        .set("llama.attention.value_length", Value::U32(8))
        .err(&["llama.attention.value_length"]);
    Spec::new("llama")
        .set("llama.rope.dimension_count", Value::U32(8))
        .err(&["llama.rope.dimension_count"]);
    Spec::new("llama")
        .set("llama.expert_count", Value::U32(8))
        .err(&["llama.expert_count"]);
    Spec::new("qwen2")
        .set("qwen2.attention.sliding_window", Value::U32(64))
        .err(&["qwen2.attention.sliding_window", "sliding window 64"]);
    for w in [0, 128, 4096] {
        let s = Spec::new("qwen2").set("qwen2.attention.sliding_window", Value::U32(w));
        assert!(s.model().is_ok(), "window {w} of 128 positions");
    }
    // llama3 divisors next to linear scaling: two scalings.
    Spec::new("llama")
        .set("llama.rope.scaling.factor", Value::F32(2.0))
        .tensor(ROPE_FREQS, &[HD / 2], GgmlType::F32)
        .err(&[ROPE_FREQS]);
}

#[test]
fn tensor_errors_name_the_tensor() {
    let s = Spec::new("llama");
    let e = s
        .clone()
        .drop_tensor("blk.0.ffn_up.weight")
        .err(&["blk.0.ffn_up.weight"]);
    assert!(matches!(e, GgufModelError::MissingTensor { .. }), "{e}");
    s.clone()
        .drop_tensor("output_norm.weight")
        .err(&["output_norm.weight"]);

    let e = s
        .clone()
        .tensor("blk.00.attn_q.weight", &[DIM, HEADS * HD], GgmlType::F32)
        .err(&["blk.0.attn_q.weight", "blk.00.attn_q.weight"]);
    assert!(matches!(e, GgufModelError::DuplicateTensor { .. }), "{e}");
    s.clone()
        .tensor("blk.+0.ffn_norm.weight", &[DIM], GgmlType::F32)
        .err(&["blk.+0.ffn_norm.weight", "same tensor"]);

    for extra in [
        "blk.0.attn_q_norm.weight",
        "blk.1.attn_norm.weight",
        "lm_head",
    ] {
        let e = s.clone().tensor(extra, &[DIM], GgmlType::F32).err(&[extra]);
        assert!(matches!(e, GgufModelError::UnexpectedTensor { .. }), "{e}");
    }

    for (name, dims) in [
        ("blk.0.attn_k.weight", vec![KV * HD, DIM]),
        ("blk.0.attn_norm.weight", vec![DIM, 1]),
        ("token_embd.weight", vec![DIM, VOCAB + 1]),
        ("output.weight", vec![DIM + 32, VOCAB]),
    ] {
        let e = s.clone().tensor(name, &dims, GgmlType::F32).err(&[name]);
        assert!(matches!(e, GgufModelError::Shape { .. }), "{e}");
    }

    for (name, dims, t) in [
        ("blk.0.ffn_gate.weight", vec![DIM, FF], GgmlType::Q5_0),
        ("blk.0.ffn_down.weight", vec![FF, DIM], GgmlType::F64),
        ("blk.0.ffn_norm.weight", vec![DIM], GgmlType::Q8_0),
        ("output_norm.weight", vec![DIM], GgmlType::I32),
        (ROPE_FREQS, vec![HD / 2], GgmlType::F16),
    ] {
        let e = s.clone().tensor(name, &dims, t).err(&[name, t.name()]);
        assert!(matches!(e, GgufModelError::TensorType { .. }), "{e}");
    }
    s.clone()
        .tensor(ROPE_FREQS, &[HD], GgmlType::F32)
        .err(&[ROPE_FREQS, "[16]", "[8]"]);

    // Biases: qwen2 needs all three; llama all three or none.
    let e = Spec::new("qwen2")
        .drop_tensor("blk.0.attn_v.bias")
        .err(&["blk.0.attn_v.bias"]);
    assert!(matches!(e, GgufModelError::MissingTensor { .. }), "{e}");
    s.clone()
        .tensor("blk.0.attn_q.bias", &[HEADS * HD], GgmlType::F32)
        .err(&["blk.0.attn_k.bias"]);
    let e = s
        .clone()
        .tensor("blk.0.attn_v.bias", &[KV * HD], GgmlType::F32)
        .err(&["blk.0.attn_v.bias"]);
    assert!(matches!(e, GgufModelError::UnexpectedTensor { .. }), "{e}");
}

#[test]
fn rope_freqs_divide_the_base_frequencies() {
    let m = Spec::new("llama")
        .tensor(ROPE_FREQS, &[HD / 2], GgmlType::F32)
        .model()
        .unwrap();
    assert!(m.rope_freqs.is_some());
    let c = &m.config;
    let base = c.rope_inv_freq();
    let divisors: Vec<f32> = (0..8).map(|i| 1.0 + i as f32).collect();
    let bytes: Vec<u8> = divisors.iter().flat_map(|d| d.to_le_bytes()).collect();
    let got = rope_inv_freq(c, &bytes, "m.gguf").unwrap();
    for i in 0..8 {
        assert_eq!(got[i], base[i] / divisors[i]);
    }
    let e = rope_inv_freq(c, &bytes[..28], "m.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.gguf") && e.contains(ROPE_FREQS), "{e}");
    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&bad.to_le_bytes());
        let e = rope_inv_freq(c, &b, "m.gguf").unwrap_err().to_string();
        assert!(e.contains("value 1"), "{e}");
    }
}

#[test]
fn config_alone_reads_no_tensor_roles() {
    // `config` needs only the header keys (and token_embd for a missing
    // vocabulary); a bad tensor is the mapping's error, not the config's.
    let s = Spec::new("llama").tensor("blk.0.attn_k.weight", &[1, 1], GgmlType::F32);
    assert_eq!(config(&s.gguf()).unwrap().n_kv_heads, 1);
    s.err(&["blk.0.attn_k.weight"]);
}

proptest! {
    #[test]
    fn qk_permutation_and_inverse_are_bijections(n_heads in 0usize..48, half in 1usize..96) {
        let p = QkPermutation::new(n_heads, 2 * half).unwrap();
        let n = p.n_rows();
        let mut seen = vec![false; n];
        for r in 0..n {
            let h = p.hf_row(r).unwrap();
            prop_assert!(h < n);
            prop_assert!(!seen[h], "row {} hit twice", h);
            seen[h] = true;
            prop_assert_eq!(h / (2 * half), r / (2 * half), "left its head");
            prop_assert_eq!(p.gguf_row(h), Some(r));
            prop_assert_eq!(p.hf_row(p.gguf_row(r).unwrap()), Some(r));
        }
        prop_assert_eq!(p.hf_row(n), None);
        prop_assert_eq!(p.gguf_row(n), None);
    }
}
