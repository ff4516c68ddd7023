//! `tpi-run serve`: loads the model as a generation would (one rank, or
//! rank 0 of a cluster with local or remote workers), then hands it to
//! [`crate::serve`]. Ranks above 0 run as workers, as without `serve`.

use super::{check_model_args, usage, worker, Loaded, ModelArgs};
use crate::error::{Error, Result};
use crate::serve::{bind, serve, Model, ServeError, ServeOpts};
use crate::ui::Console;
use std::path::PathBuf;
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
    let mut opts = ServeOpts {
        api_key: a.api_key.clone(),
        ..ServeOpts::default()
    };
    opts.limits.deadline = Duration::from_secs_f64(a.request_timeout);
    opts.limits.idle = opts.limits.deadline;
    // The port first: a taken port fails before the model loads.
    let console = Console { quiet: m.quiet };
    let listener = bind(&a.listen, &opts, &console).map_err(from_serve)?;

    let loaded = Loaded::open(m)?;
    let ckpt = &loaded.ckpt;
    let tokenizer = ckpt.tokenizer.as_ref().ok_or_else(|| {
        usage(
            "serve",
            format!("needs {}/tokenizer.json (the API takes text)", ckpt.origin),
        )
    })?;
    let chat =
        super::chat_template::template(ckpt, m.model.as_deref(), a.chat_template.as_deref())?;
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
    let mut gen = loaded.start(m)?;
    serve(listener, gen.as_mut(), &model, &opts, &*loaded.observer).map_err(from_serve)
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
