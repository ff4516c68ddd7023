//! `tpi-run serve`: loads the model as a generation would (one rank, or
//! rank 0 of a cluster with local or remote workers), then hands it to
//! [`crate::serve`]. Ranks above 0 run as workers, as without `serve`.

use super::{check_model_args, cores, memory_opts, net_opts, secret, usage, worker, ModelArgs};
use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::serve::{bind, serve, Model, ServeError, ServeOpts};
use crate::session::hub::Hub;
use crate::session::single::{Single, SingleSetup};
use crate::session::{default_cache_dir, plan_for_model, Generator, HubSetup};
use crate::ui::Console;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `tpi-run serve` flags: the model and cluster flags of a generation,
/// and how to listen.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// ADDR:PORT to serve HTTP on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Require `Authorization: Bearer KEY` on every /v1/ request.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// A Jinja chat template file, instead of the model's own
    /// (tokenizer_config.json, or the GGUF's tokenizer.chat_template).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Seconds a request may take to arrive whole (headers and body).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub request_timeout: f64,
}

/// The id the API gives the model: its directory or file name.
fn model_id(m: &ModelArgs) -> String {
    m.model
        .as_deref()
        .and_then(|p| p.file_name())
        .map_or("stories260K".to_string(), |n| {
            n.to_string_lossy().into_owned()
        })
}

/// Runs `tpi-run serve`.
pub fn run_serve(a: &ServeArgs) -> Result<()> {
    let m = &a.model;
    check_model_args(m)?;
    if !(a.request_timeout > 0.0 && a.request_timeout < 1e6) {
        return Err(usage(
            "--request-timeout",
            format!(
                "must be a positive number of seconds, got {}",
                a.request_timeout
            ),
        ));
    }
    if a.api_key.as_deref().is_some_and(str::is_empty) {
        return Err(usage("--api-key", "the key is empty"));
    }
    if let Some(rank) = m.rank.filter(|&r| r > 0) {
        return worker(m, rank);
    }
    let observer = Arc::new(Console { quiet: m.quiet });
    let mut opts = ServeOpts {
        api_key: a.api_key.clone(),
        ..ServeOpts::default()
    };
    opts.limits.deadline = Duration::from_secs_f64(a.request_timeout);
    opts.limits.idle = opts.limits.deadline;
    // The port first: a taken port fails before the model loads.
    let listener = bind(&a.listen, &opts, &*observer).map_err(from_serve)?;

    let ckpt = Checkpoint::open(m.model.as_deref())?;
    let tokenizer = ckpt.tokenizer.as_ref().ok_or_else(|| {
        usage(
            "serve",
            format!("needs {}/tokenizer.json (the API takes text)", ckpt.origin),
        )
    })?;
    let weights = m
        .split_weights
        .as_deref()
        .map(|s| super::parse_weights(s, m.world_size))
        .transpose()?;
    let plan = plan_for_model(&ckpt, m.world_size, weights.as_deref(), m.quantize)?;
    let chat = super::chat::template(&ckpt, m.model.as_deref(), a.chat_template.as_deref())?;
    let model = Model {
        id: model_id(m),
        context: ckpt.config.max_seq_len,
        vocab: ckpt.config.vocab_size,
        eos_ids: ckpt.config.eos_token_ids.clone(),
        tokenizer,
        chat: chat
            .as_ref()
            .map(|c| c as &dyn crate::serve::Render)
            .map_err(Clone::clone),
    };
    let cache_dir = m.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let n = m.world_size;
    let local = m.rank.is_none();
    let threads = m
        .threads
        .unwrap_or(if local { (cores() / n).max(1) } else { cores() });
    let listen = match local {
        true => "127.0.0.1:0".to_string(),
        false => m.master.clone().unwrap_or_default(),
    };
    let mut gen: Box<dyn Generator + '_> = if n == 1 {
        let setup = SingleSetup {
            ckpt: &ckpt,
            plan: &plan,
            cache_dir: &cache_dir,
            memory: memory_opts(m),
            threads,
            observer: &*observer,
        };
        Box::new(Single::start(&setup)?)
    } else {
        let setup = HubSetup {
            ckpt: &ckpt,
            plan: &plan,
            cache_dir: &cache_dir,
            listen: &listen,
            spawn_local: local.then_some(threads),
            threads,
            memory: memory_opts(m),
            net: net_opts(m),
            quiet: m.quiet,
            observer: observer.clone(),
            secret: secret(m)?,
            secret_file: m.secret_file.clone(),
        };
        Box::new(Hub::start(&setup)?)
    };
    serve(listener, gen.as_mut(), &model, &opts, &*observer).map_err(from_serve)
}

/// The crate's error for a server's: an address or socket as an I/O
/// error naming it, the engine's own error as it was.
fn from_serve(e: ServeError) -> Error {
    match e {
        ServeError::Bind { addr, source } => Error::Io {
            path: format!("--listen {addr}"),
            source,
        },
        ServeError::Accept(source) => Error::Io {
            path: "accepting HTTP connections".to_string(),
            source,
        },
        ServeError::Engine(e) => *e,
    }
}
