//! Writes a complete random-weight HuggingFace Llama model directory, for
//! benchmarks and large-model tests without downloading anything.
//!
//! ```text
//! cargo run --release --example make_model -- --out DIR --dtype f32|f16|bf16 \
//!     [--dim 2048 --hidden-dim 5632 --layers 22 --heads 32 --kv-heads 4 --vocab 32000 --seed 1]
//! ```
//!
//! Defaults are the TinyLlama-1.1B shape. Tensors are streamed to disk one
//! at a time, so RAM use stays small even for the 4.4 GB f32 case.
//!
//! No tokenizer.json is written: the model is for speed and split tests and
//! is driven with `--prompt-ids`; tpi-run then reports ids only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tpi::model::safetensors::{Dtype, StreamWriter};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    fn dtype(self) -> Dtype {
        match self {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::BF16,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            DtypeArg::F32 => "float32",
            DtypeArg::F16 => "float16",
            DtypeArg::Bf16 => "bfloat16",
        }
    }
}

/// Write a random-weight Llama model directory.
#[derive(Parser, Debug)]
struct Args {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Stored weight dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// hidden_size
    #[arg(long, default_value_t = 2048)]
    dim: usize,
    /// intermediate_size
    #[arg(long, default_value_t = 5632)]
    hidden_dim: usize,
    /// num_hidden_layers
    #[arg(long, default_value_t = 22)]
    layers: usize,
    /// num_attention_heads
    #[arg(long, default_value_t = 32)]
    heads: usize,
    /// num_key_value_heads
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    /// vocab_size
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    /// PRNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64* PRNG.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn next_sym(&mut self) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * u - 1.0
    }
}

enum Init {
    /// uniform(-a, a)
    Uniform(f32),
    /// 1.0 + uniform(-a, a)
    AroundOne(f32),
}

/// Elements generated per write (16 MiB of f32).
const CHUNK: usize = 4 << 20;

fn encode(dtype: Dtype, vals: &[f32], out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        Dtype::F32 => {
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F16 => {
            for v in vals {
                out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for v in vals {
                out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
    }
}

fn write_dir(args: &Args) -> Result<(), String> {
    let (d, h, v) = (args.dim, args.hidden_dim, args.vocab);
    if d == 0 || h == 0 || v == 0 || args.layers == 0 || args.heads == 0 || args.kv_heads == 0 {
        return Err("all sizes must be positive".into());
    }
    if !d.is_multiple_of(args.heads) || !args.heads.is_multiple_of(args.kv_heads) {
        return Err("dim must divide by heads and heads by kv-heads".into());
    }
    let head_dim = d / args.heads;
    if !head_dim.is_multiple_of(2) {
        return Err(format!("head_dim {head_dim} must be even"));
    }
    let kv = args.kv_heads * head_dim;
    let dtype = args.dtype.dtype();
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;

    let mut specs: Vec<(String, Dtype, Vec<usize>, Init)> = Vec::new();
    let norm = || Init::AroundOne(0.05);
    specs.push((
        "model.embed_tokens.weight".into(),
        dtype,
        vec![v, d],
        Init::Uniform(0.05),
    ));
    for i in 0..args.layers {
        let p = format!("model.layers.{i}");
        let mut add = |n: &str, shape: Vec<usize>, init: Init| {
            specs.push((format!("{p}.{n}"), dtype, shape, init));
        };
        add("input_layernorm.weight", vec![d], norm());
        add("self_attn.q_proj.weight", vec![d, d], Init::Uniform(0.05));
        add("self_attn.k_proj.weight", vec![kv, d], Init::Uniform(0.05));
        add("self_attn.v_proj.weight", vec![kv, d], Init::Uniform(0.05));
        add("self_attn.o_proj.weight", vec![d, d], Init::Uniform(0.05));
        add("post_attention_layernorm.weight", vec![d], norm());
        add("mlp.gate_proj.weight", vec![h, d], Init::Uniform(0.05));
        add("mlp.up_proj.weight", vec![h, d], Init::Uniform(0.05));
        add("mlp.down_proj.weight", vec![d, h], Init::Uniform(0.05));
    }
    specs.push(("model.norm.weight".into(), dtype, vec![d], norm()));
    specs.push((
        "lm_head.weight".into(),
        dtype,
        vec![v, d],
        Init::Uniform(0.05),
    ));

    let st_path = out.join("model.safetensors");
    let header: Vec<(String, Dtype, Vec<usize>)> = specs
        .iter()
        .map(|(n, dt, s, _)| (n.clone(), *dt, s.clone()))
        .collect();
    let err = |e: std::io::Error| format!("{}: {e}", st_path.display());
    let mut writer = StreamWriter::create(&st_path, &header).map_err(err)?;
    let mut rng = Rng::new(args.seed);
    let mut vals = Vec::with_capacity(CHUNK);
    let mut bytes = Vec::with_capacity(CHUNK * 4);
    let mut total = 0usize;
    for (_, _, shape, init) in &specs {
        let mut left: usize = shape.iter().product();
        total += left;
        while left > 0 {
            let n = left.min(CHUNK);
            vals.clear();
            match init {
                Init::Uniform(a) => vals.extend((0..n).map(|_| a * rng.next_sym())),
                Init::AroundOne(a) => vals.extend((0..n).map(|_| 1.0 + a * rng.next_sym())),
            }
            encode(dtype, &vals, &mut bytes);
            writer.write_tensor_data(&bytes).map_err(err)?;
            left -= n;
        }
    }
    writer.finish().map_err(err)?;

    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": h,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": head_dim,
        "vocab_size": v,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": args.dtype.torch_name(),
    });
    let generation = serde_json::json!({
        "bos_token_id": 1,
        "eos_token_id": 2,
        "do_sample": false,
    });
    write_json(&out.join("config.json"), &config)?;
    write_json(&out.join("generation_config.json"), &generation)?;

    eprintln!(
        "wrote {}: {} tensors, {:.2} G params, {} ({:.2} GB)",
        out.display(),
        specs.len(),
        total as f64 / 1e9,
        dtype.name(),
        (total * dtype.size()) as f64 / 1e9
    );
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match write_dir(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make_model: {e}");
            ExitCode::FAILURE
        }
    }
}
