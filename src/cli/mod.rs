//! The `tpi-run` command line.

use crate::engine::{check_context, EngineError, Flow, GenOptions, SamplerConfig};
use crate::error::{Error, Result, UsageError};
use crate::model::dtype::Quant;
use crate::net::{NetOpts, Secret, WireDtype};
use crate::session::{default_cache_dir, run_worker, WorkerSetup};
use crate::sys::available_memory;
use crate::ui::Console;
use crate::window::policy::{IoMode, MemoryMode, MemoryOpts};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tpi_kernels::Backend;

/// Run a Llama-family model, HuggingFace or GGUF (without --model: the
/// bundled TinyStories 260K demo).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "tpi-run",
    about,
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Something other than a generation (`tpi-run cache list|prune`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print version, target and the kernel backend this CPU selects.
    #[arg(long, short = 'V')]
    pub version: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
}

/// The flags that load a model and join a cluster, shared by a generation
/// and `tpi-run serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// HuggingFace model directory (config.json, *.safetensors, tokenizer.json),
    /// or a GGUF file (part 1 of a split `-00001-of-0000N.gguf` model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Compute threads (default: all cores; at most 1024).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Ranks in the session (at most 1024). Without --rank: local mode
    /// (ranks 1..N-1 are spawned on this machine over loopback).
    #[arg(long, default_value_t = 1)]
    pub world_size: usize,
    /// This process's rank (0 = the hub, which needs --model or the bundled model).
    #[arg(long)]
    pub rank: Option<usize>,
    /// HOST:PORT rank 0 listens on and workers connect to.
    #[arg(long)]
    pub master: Option<String>,
    /// Where slice files are kept (default $TPI_CACHE_DIR, $XDG_CACHE_HOME/tpi or ~/.cache/tpi).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Relative speeds of the ranks for an uneven split, e.g. 2,1,1.
    #[arg(long)]
    pub split_weights: Option<String>,
    /// Seconds to wait for all ranks to join.
    #[arg(long, default_value_t = 30.0)]
    pub join_timeout: f64,
    /// Seconds of silence after which a peer counts as dead.
    #[arg(long, default_value_t = 10.0)]
    pub peer_timeout: f64,
    /// Microseconds a rank waiting for a peer's message retries (yielding
    /// the CPU) before it sleeps in the kernel; 0 = plain blocking reads.
    #[arg(long, value_name = "US", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub net_spin_us: u64,
    /// Type of the allreduce payloads on the wire (f32|f16|q8_0): f16 halves
    /// and q8_0 (ggml blocks of 32, 34 bytes) about quarters the bytes of
    /// f32, at a rounding error per exchange. Rank 0's choice holds for the
    /// session; a worker needs no flag, and one given another type is
    /// refused naming both.
    #[arg(long, value_name = "TYPE", value_parser = parse_wire)]
    pub wire_dtype: Option<WireDtype>,
    /// Workers: fetch the slice again even if a verified copy is cached.
    #[arg(long)]
    pub force_download: bool,
    /// Keep only W layer blocks of weights in RAM (W >= 2), streamed from
    /// the slice file by an I/O thread.
    #[arg(long, value_name = "W", conflicts_with = "no_memory_window")]
    pub memory_window: Option<usize>,
    /// Keep every layer in RAM.
    #[arg(long)]
    pub no_memory_window: bool,
    /// Store the layer matrices of the slice files as ggml blocks
    /// (q8_0|q4_0, or the 256-weight K-quants q4_k|q6_k): quantized when
    /// rank 0 cuts the slices, run with 8-bit activations. The lm_head is
    /// Q8_0; norms and biases stay f32; the embedding keeps its stored
    /// dtype. Workers with their own --model need the same flag.
    #[arg(long, value_name = "TYPE", value_parser = parse_quant)]
    pub quantize: Option<Quant>,
    /// Read the slice with O_DIRECT (no second copy in the page cache).
    /// Default: O_DIRECT when the slice is larger than MemAvailable, else
    /// window blocks mapped from the page cache.
    #[arg(long, conflicts_with_all = ["buffered_io", "mapped_io"])]
    pub direct_io: bool,
    /// Read window blocks with pread through the page cache, even when the
    /// slice cannot stay there.
    #[arg(long, conflicts_with = "mapped_io")]
    pub buffered_io: bool,
    /// Map window blocks from the page cache (no copy), even when the
    /// slice cannot stay there.
    #[arg(long)]
    pub mapped_io: bool,
    /// File holding the pre-shared key every rank must prove (else the
    /// TPI_SECRET environment variable, else no authentication).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Less progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// What one generation from the command line prompts and prints.
#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Prompt text (encoded with the model's tokenizer, BOS as it adds it).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 1,403,407.
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// Tokens to generate (the prompt plus these must fit the model's
    /// context, max_position_embeddings).
    #[arg(long, default_value_t = 20)]
    pub length: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object with ids, text and timings on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the logits at the last prompt position to FILE as a JSON array.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// Print the split plan and exit (as one JSON object with --json).
    #[arg(long)]
    pub dry_run: bool,
}

/// How each next token is picked.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
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
}

impl SamplingArgs {
    /// The sampler these flags ask for, once their ranges are checked.
    pub fn config(&self) -> Result<SamplerConfig> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(usage(
                "--temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(usage(
                "--top-p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        Ok(SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        })
    }
}

/// `tpi-run <command>`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// The slice cache: list its entries or prune them.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Serve the model over HTTP: an OpenAI-compatible API
    /// (/v1/chat/completions, /v1/completions, /v1/models) and a chat page at /.
    Serve(Box<ServeArgs>),
    /// Chat with the model in the terminal (stdin/stdout, the model's
    /// chat template; each turn reuses the KV cache of the last).
    Chat(Box<ChatArgs>),
}

mod cache;
mod chat;
mod chat_template;
mod load;
mod report;
mod serve;

use cache::run_cache;
pub use cache::{CacheCommand, CacheDir};
use chat::run_chat;
pub use chat::ChatArgs;
use load::Loaded;
use report::{print_dry_run, print_report, stdout_err, write_logits};
use serve::run_serve;
pub use serve::ServeArgs;

/// Most compute threads per rank: more than any board has cores, few
/// enough that a typo cannot exhaust the process's threads.
pub const MAX_THREADS: usize = 1024;
/// Most ranks in a session (the plan also needs one query head per rank).
pub const MAX_WORLD: usize = 1024;

/// A usage error naming `flag`.
pub(crate) fn usage(flag: &'static str, problem: impl Into<String>) -> Error {
    Error::Usage(UsageError {
        flag,
        problem: problem.into(),
    })
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

fn parse_quant(s: &str) -> std::result::Result<Quant, String> {
    Quant::from_name(s).ok_or_else(|| format!("'{s}' is not q8_0, q4_0, q4_k or q6_k"))
}

fn parse_wire(s: &str) -> std::result::Result<WireDtype, String> {
    WireDtype::from_name(s).ok_or_else(|| format!("'{s}' is not f32, f16 or q8_0"))
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| usage("--prompt-ids", format!("'{t}' is not a token id")))
        })
        .collect()
}

/// Checks every range and combination clap cannot express.
pub fn check_args(a: &Args) -> Result<()> {
    a.gen.sampling.config()?;
    check_model_args(&a.model)
}

/// Checks the model and cluster flags clap cannot express.
pub fn check_model_args(a: &ModelArgs) -> Result<()> {
    if !(1..=MAX_WORLD).contains(&a.world_size) {
        return Err(usage(
            "--world-size",
            format!("must be in 1..={MAX_WORLD}, got {}", a.world_size),
        ));
    }
    if let Some(r) = a.rank {
        if r >= a.world_size {
            return Err(usage(
                "--rank",
                format!("{r} is not below --world-size {}", a.world_size),
            ));
        }
        if a.master.is_none() {
            return Err(usage("--rank", "needs --master HOST:PORT"));
        }
    }
    for (name, v) in [
        ("--join-timeout", a.join_timeout),
        ("--peer-timeout", a.peer_timeout),
    ] {
        if !(v > 0.0 && v.is_finite() && v < 1e6) {
            return Err(usage(
                name,
                format!("must be a positive number of seconds, got {v}"),
            ));
        }
    }
    if a.memory_window.is_some_and(|w| w < 2) {
        return Err(usage("--memory-window", "needs at least 2 blocks"));
    }
    if let Some(t) = a.threads.filter(|t| !(1..=MAX_THREADS).contains(t)) {
        return Err(usage(
            "--threads",
            format!("must be in 1..={MAX_THREADS}, got {t}"),
        ));
    }
    Ok(())
}

pub(crate) fn parse_weights(s: &str, n: usize) -> Result<Vec<u32>> {
    let w: Vec<u32> = s
        .split(',')
        .map(|t| {
            t.trim().parse::<u32>().map_err(|_| {
                usage(
                    "--split-weights",
                    format!("'{t}' is not a positive integer"),
                )
            })
        })
        .collect::<Result<_>>()?;
    if w.len() != n || w.contains(&0) {
        return Err(usage(
            "--split-weights",
            format!("needs {n} positive integers, got '{s}'"),
        ));
    }
    Ok(w)
}

/// The pre-shared key from --secret-file or TPI_SECRET, if any.
pub(crate) fn secret(a: &ModelArgs) -> Result<Option<Secret>> {
    let key: Vec<u8> = match &a.secret_file {
        Some(path) => std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?,
        None => match std::env::var_os("TPI_SECRET") {
            Some(v) => v.into_encoded_bytes(),
            None => return Ok(None),
        },
    };
    // A trailing newline from `echo key > file` is not part of the key.
    let key = key.trim_ascii_end();
    if key.is_empty() {
        return Err(usage(
            "--secret-file / TPI_SECRET",
            "the pre-shared key is empty",
        ));
    }
    Ok(Some(Secret::from(key)))
}

pub(crate) fn memory_opts(a: &ModelArgs) -> MemoryOpts {
    let mode = match (a.memory_window, a.no_memory_window) {
        (Some(w), _) => MemoryMode::Window(w),
        (None, true) => MemoryMode::Resident,
        (None, false) => MemoryMode::Auto,
    };
    let io = match (a.direct_io, a.buffered_io, a.mapped_io) {
        (true, _, _) => IoMode::Direct,
        (_, true, _) => IoMode::Buffered,
        (_, _, true) => IoMode::Mapped,
        _ => IoMode::Auto,
    };
    MemoryOpts { mode, io }
}

pub(crate) fn net_opts(a: &ModelArgs) -> NetOpts {
    NetOpts {
        join_timeout: Duration::from_secs_f64(a.join_timeout),
        peer_timeout: Duration::from_secs_f64(a.peer_timeout),
        spin: Duration::from_micros(a.net_spin_us),
        wire: a.wire_dtype,
        ..NetOpts::default()
    }
}

/// This machine's cores.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs worker `rank` of a cluster (a generation's or a server's).
pub(crate) fn worker(m: &ModelArgs, rank: usize) -> Result<()> {
    let cache_dir = m.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let master = m.master.as_deref().unwrap_or_default();
    let weights = m
        .split_weights
        .as_deref()
        .map(|s| parse_weights(s, m.world_size))
        .transpose()?;
    let setup = WorkerSetup {
        model: m.model.as_deref(),
        split_weights: weights.as_deref(),
        quant: m.quantize,
        master,
        rank,
        world_size: m.world_size,
        cache_dir: &cache_dir,
        threads: m.threads.unwrap_or(cores()),
        force_download: m.force_download,
        memory: memory_opts(m),
        net: net_opts(m),
        observer: &Console { quiet: m.quiet },
        secret: secret(m)?,
    };
    run_worker(&setup)
}

/// Runs `tpi-run` with parsed arguments.
pub fn run(args: &Args) -> Result<()> {
    if args.version {
        let mut out = std::io::stdout().lock();
        return writeln!(out, "tpi-run {}", version_line()).map_err(stdout_err);
    }
    match &args.command {
        Some(Command::Cache(c)) => return run_cache(c),
        Some(Command::Serve(s)) => return run_serve(s),
        Some(Command::Chat(c)) => return run_chat(c),
        None => {}
    }
    check_args(args)?;
    let m = &args.model;
    if let Some(rank) = m.rank.filter(|&r| r > 0) {
        return worker(m, rank);
    }

    let loaded = Loaded::open(m)?;
    let (ckpt, plan) = (&loaded.ckpt, &loaded.plan);
    let cfg = &ckpt.config;
    if args.gen.dry_run {
        return print_dry_run(ckpt, plan, args.gen.json);
    }
    let prompt_ids = match (&args.gen.prompt, &args.gen.prompt_ids) {
        (Some(text), _) => {
            let tok = ckpt.tokenizer.as_ref().ok_or_else(|| {
                usage(
                    "--prompt",
                    format!("needs {}/tokenizer.json; use --prompt-ids", ckpt.origin),
                )
            })?;
            tok.encode(text)?
        }
        (None, Some(ids)) => parse_ids(ids)?,
        (None, None) => {
            return Err(usage(
                "--prompt",
                "give --prompt TEXT or --prompt-ids 1,2,3",
            ))
        }
    };
    // Everything the user asked for is checked before a slice is cut or a
    // worker joins.
    check_context(prompt_ids.len(), args.gen.length, cfg.max_seq_len)?;
    check_kv_memory(plan, prompt_ids.len() + args.gen.length, available_memory())?;
    let logits_file = args
        .gen
        .logits_out
        .as_deref()
        .map(|path| {
            std::fs::File::create(path).map_err(|source| Error::Io {
                path: format!("--logits-out {}", path.display()),
                source,
            })
        })
        .transpose()?;
    let backend = Backend::detect();
    let opts = GenOptions {
        length: args.gen.length,
        sampler: args.gen.sampling.config()?,
        eos_ids: cfg.eos_token_ids.clone(),
        ignore_eos: args.gen.ignore_eos,
        keep_prompt_logits: false,
    };
    let stdout = std::io::stdout();
    let json = args.gen.json;
    // A closed or full stdout ends the generation with an error (exit 1),
    // in a cluster too: rank 0 then tells the workers.
    let mut on_text = |piece: &str| -> std::result::Result<Flow, crate::engine::error::Cause> {
        if !json {
            let mut out = stdout.lock();
            out.write_all(piece.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Box::new(stdout_err(e)))?;
        }
        Ok(Flow::Continue)
    };
    let mut gen = loaded.start(m)?;
    let out = gen.generate(&prompt_ids, &opts, &mut on_text)?;
    let report = gen.finish(out);
    if let (Some(file), Some(path)) = (logits_file, &args.gen.logits_out) {
        write_logits(file, path, &report.out.last_logits)?;
    }
    print_report(&report, backend, loaded.threads, m.world_size, json)
}

/// Errs when rank 0's KV cache for `positions` (f32 keys and values of its
/// KV heads in every layer) would not fit in `available` memory: a clear
/// error now rather than the kernel's OOM killer halfway through.
fn check_kv_memory(
    plan: &crate::split::plan::Plan,
    positions: usize,
    available: Option<u64>,
) -> Result<()> {
    let s = &plan.shape;
    let kv_heads = plan.ranks.first().map_or(0, |r| r.kv_heads.len());
    let bytes = [2, s.n_layers, kv_heads, s.head_dim, 4, positions]
        .iter()
        .fold(1u64, |a, &b| a.saturating_mul(b as u64));
    match available {
        Some(avail) if bytes > avail => Err(EngineError::Memory {
            what: format!(
                "the KV cache for {positions} positions on rank 0 ({} available)",
                crate::progress::human_bytes(avail as f64)
            ),
            bytes,
        }
        .into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::plan::{split, Shape};

    #[test]
    fn kv_cache_beyond_available_memory_is_refused_up_front() {
        // Llama-3-8B shape: 32 layers, 8 KV heads of 128, two ranks.
        let shape = Shape {
            dim: 4096,
            hidden_dim: 14336,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            vocab_size: 128256,
            n_layers: 32,
        };
        let plan = split(&shape, 2, None).expect("plan");
        // Rank 0 holds 4 KV heads: 2 x 32 x 4 x 128 x 4 bytes = 128 KiB per position.
        let per_position = 128 << 10;
        assert!(check_kv_memory(&plan, 1000, Some(1000 * per_position)).is_ok());
        let e = check_kv_memory(&plan, 1001, Some(1000 * per_position)).unwrap_err();
        assert!(
            e.to_string()
                .contains("KV cache for 1001 positions on rank 0"),
            "{e}"
        );
        assert!(check_kv_memory(&plan, usize::MAX, None).is_ok());
        assert!(check_kv_memory(&plan, usize::MAX, Some(u64::MAX - 1)).is_err());
    }
}
