//! The `tpi-run` command line.

use crate::checkpoint::Checkpoint;
use crate::engine::{generate, peak_rss_bytes, GenOptions, GenOutput, Rank};
use crate::error::{Error, Result};
use crate::load::{resident, InPlace};
use crate::model::{Part, Solo};
use crate::par::Par;
use crate::sampler::SamplerConfig;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use tpi_kernels::Backend;

/// Run a HuggingFace Llama-family model (without --model: the bundled
/// TinyStories 260K demo).
#[derive(Parser, Debug, Clone)]
#[command(name = "tpi-run", about, disable_version_flag = true)]
pub struct Args {
    /// Print version, target and the kernel backend this CPU selects.
    #[arg(long, short = 'V')]
    pub version: bool,
    /// HuggingFace model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt text (encoded with the model's tokenizer, BOS as it adds it).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 1,403,407.
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 20)]
    pub length: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object with ids, text and timings on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the logits at the last prompt position to FILE as a JSON array.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
}

/// `tpi-run --version`: version, target triple, kernel backend.
pub fn version_line() -> String {
    format!(
        "{} (target {}, kernel {})",
        env!("CARGO_PKG_VERSION"),
        env!("TPI_TARGET"),
        Backend::detect().name()
    )
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| Error::Usage(format!("--prompt-ids: '{t}' is not a token id")))
        })
        .collect()
}

fn check_args(a: &Args) -> Result<()> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err(Error::Usage(format!(
            "--temperature must be >= 0, got {}",
            a.temperature
        )));
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(Error::Usage(format!(
            "--top-p must be in (0, 1], got {}",
            a.top_p
        )));
    }
    if a.threads == Some(0) {
        return Err(Error::Usage("--threads must be at least 1".into()));
    }
    Ok(())
}

/// Runs `tpi-run` with parsed arguments.
pub fn run(args: &Args) -> Result<()> {
    if args.version {
        println!("tpi-run {}", version_line());
        return Ok(());
    }
    check_args(args)?;
    let ckpt = Checkpoint::open(args.model.as_deref())?;
    let cfg = &ckpt.config;
    let prompt_ids = match (&args.prompt, &args.prompt_ids) {
        (Some(text), _) => {
            let tok = ckpt.tokenizer.as_ref().ok_or_else(|| {
                Error::Usage(format!(
                    "--prompt needs {}/tokenizer.json; use --prompt-ids",
                    ckpt.origin
                ))
            })?;
            tok.encode(text)?
        }
        (None, Some(ids)) => parse_ids(ids)?,
        (None, None) => {
            return Err(Error::Usage(
                "give --prompt TEXT or --prompt-ids 1,2,3".into(),
            ))
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let backend = Backend::detect();
    let part = Part::whole(cfg);
    let res = resident(cfg, &ckpt.weights, &part)?;
    let mut mats = InPlace::new(cfg, &ckpt.weights)?;
    let mut head = InPlace::new(cfg, &ckpt.weights)?;
    let mut solo = Solo;
    let mut rank = Rank {
        res: &res,
        layers: &mut mats,
        head: &mut head,
        comm: &mut solo,
        par: Par::new(threads, backend),
    };
    let opts = GenOptions {
        length: args.length,
        sampler: SamplerConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        eos_ids: cfg.eos_token_ids.clone(),
        ignore_eos: args.ignore_eos,
        keep_prompt_logits: false,
    };
    let stdout = std::io::stdout();
    let json = args.json;
    let mut on_text = |piece: &str| {
        if !json {
            let mut out = stdout.lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    };
    let out = generate(
        &mut rank,
        ckpt.tokenizer.as_ref(),
        &prompt_ids,
        &opts,
        &mut on_text,
    )?;
    if let Some(path) = &args.logits_out {
        write_logits(path, &out.last_logits)?;
    }
    report(&out, backend, threads, json)
}

fn write_logits(path: &std::path::Path, logits: &[f32]) -> Result<()> {
    let text = serde_json::to_string(logits).map_err(|e| Error::Model(format!("logits: {e}")))?;
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn report(out: &GenOutput, backend: Backend, threads: usize, json: bool) -> Result<()> {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let rss = peak_rss_bytes().unwrap_or(0);
    if json {
        let v = serde_json::json!({
            "prompt_ids": out.prompt_ids,
            "generated_ids": out.generated_ids,
            "text": out.text,
            "ttft_ms": ms(out.ttft),
            "ms_per_token": ms(out.per_token),
            "tokens_per_s": out.tokens_per_s(),
            "peak_rss_bytes": rss,
            "kernel": backend.name(),
            "threads": threads,
            "world_size": 1,
            "comm_ms_per_token": ms(out.comm_per_token),
        });
        println!("{v}");
    } else {
        println!();
        eprintln!(
            "[tpi] {} tokens, TTFT {:.1} ms, {:.2} ms/token, {:.1} tokens/s, peak RSS {:.1} MiB, kernel {}, {} threads",
            out.generated_ids.len(),
            ms(out.ttft),
            ms(out.per_token),
            out.tokens_per_s(),
            rss as f64 / (1024.0 * 1024.0),
            backend.name(),
            threads
        );
    }
    Ok(())
}
