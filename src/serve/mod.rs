//! `tpi-run serve`: the loaded model (one rank, or rank 0 of a cluster)
//! behind an OpenAI-compatible HTTP/1.1 API and a small chat page.
//!
//! ```text
//! acceptor thread --(bounded: MAX_CONNECTIONS)--> one thread per connection
//!   connection: read request (http) -> parse (api) -> render + tokenize
//!               -> Queue::submit(Job) --(FIFO, QUEUE_DEPTH)--> engine thread
//!   engine:     Generator::generate, Event::Text per piece --(the job's channel)--> connection
//!               -> SSE event or collected text -> response
//! ```
//!
//! # HTTP (`http.rs`)
//!
//! | rule | |
//! |---|---|
//! | H1 | request line `METHOD SP /path SP HTTP/1.0|1.1`, else 400 |
//! | H2 | request line + headers at most 16 KiB and 64 header lines, else 431 |
//! | H3 | header lines `token: value`; no line folding, else 400 |
//! | H4 | a body only with one decimal Content-Length, at most 1 MiB (413); Transfer-Encoding (chunked) refused with 411 |
//! | H5 | from its first byte, a request has 10 s (`--request-timeout`) to arrive whole, else 408 and close (slow clients cannot hold a thread); an idle kept-alive connection closes after as long |
//! | H6 | every response has Content-Length, except server-sent events |
//! | H7 | HTTP/1.1 keeps the connection unless `Connection: close`; 1.0 closes unless `keep-alive` |
//! | H8 | a stream is `text/event-stream`, one `data: {chunk}` event per piece of text, flushed, then `data: [DONE]`, then close |
//!
//! # API (`api.rs`)
//!
//! | rule | |
//! |---|---|
//! | A1 | the body is one JSON object, else 400 |
//! | A2 | `model` may be absent; another id than the loaded model's is 404 `model_not_found` |
//! | A3 | typed fields (`max_tokens`, `temperature` in [0, 2], `top_p` in [0, 1], `seed`, `stop` string or list, `stream`, `n` = 1), else 400 naming the field; prompt ids past the model's vocabulary are 400 |
//! | A4 | chat needs `messages` (1 to 4096, each with `role` and `content`) and a chat template (400 without); the rendered text is tokenized adding no special token (the template writes BOS) |
//! | A5 | a stop string ends generation; neither it nor any part of it is sent |
//! | A6 | prompt tokens + `max_tokens` beyond the context is 400 naming both; without `max_tokens` the answer may fill the context |
//! | A7 | with `--api-key`, every `/v1/` request needs `Authorization: Bearer KEY`, else 401 (`/` and `/health` stay open) |
//!
//! # Queue (`engine.rs`)
//!
//! | rule | |
//! |---|---|
//! | Q1 | one engine thread owns the generator: one generation at a time, first come first served |
//! | Q2 | at most `QUEUE_DEPTH` jobs wait; one more is 503; beyond `MAX_CONNECTIONS` open connections a new one gets 503 and is closed |
//! | Q3 | an idle engine heartbeats its workers every 500 ms; a failed heartbeat (a worker gone) ends the server with that error |
//! | Q4 | a client that goes away stops its generation at the next piece (a stream's write fails, or the socket reads end-of-stream while waiting); one that left while queued is skipped |

pub mod api;
mod conn;
pub mod engine;
pub mod http;
pub mod stop;

use crate::model::tokenizer::Tokenizer;
use crate::progress::Observer;
use crate::session::Generator;
use api::ChatMessage;
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Jobs that may wait for the engine (Q2).
pub const QUEUE_DEPTH: usize = 16;
/// Connections open at once (Q2): each holds a thread.
pub const MAX_CONNECTIONS: usize = 64;

/// How a chat's messages become prompt text (the model's chat template).
pub trait Render: Sync {
    fn render(&self, messages: &[ChatMessage]) -> Result<String, String>;
}

/// The loaded model as the API sees it.
pub struct Model<'a> {
    /// The id `/v1/models` lists and responses name.
    pub id: String,
    /// Positions the model holds: prompt + generated tokens.
    pub context: usize,
    /// Token ids the model embeds (a tokenizer may know more).
    pub vocab: usize,
    pub eos_ids: Vec<u32>,
    pub tokenizer: &'a Tokenizer,
    /// The chat template, or why there is none (the chat endpoint's 400).
    pub chat: Result<&'a dyn Render, String>,
}

/// How the server listens and whom it lets in.
#[derive(Clone, Debug)]
pub struct ServeOpts {
    /// `Authorization: Bearer KEY` required on `/v1/` (A7).
    pub api_key: Option<String>,
    pub limits: http::Limits,
    pub queue_depth: usize,
    pub max_connections: usize,
}

impl Default for ServeOpts {
    fn default() -> Self {
        ServeOpts {
            api_key: None,
            limits: http::Limits::default(),
            queue_depth: QUEUE_DEPTH,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug)]
pub enum ServeError {
    /// Binding the listen address failed.
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// Accepting connections failed for good.
    Accept(std::io::Error),
    /// The generator failed between requests (a worker gone).
    Engine(Box<crate::Error>),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServeError::Accept(e) => write!(f, "accepting connections: {e}"),
            ServeError::Engine(e) => write!(f, "the engine stopped: {e}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Bind { source, .. } => Some(source),
            ServeError::Accept(e) => Some(e),
            ServeError::Engine(e) => Some(e.as_ref()),
        }
    }
}

/// Binds `addr` (warning when it is not loopback and no key is set).
pub fn bind(
    addr: &str,
    opts: &ServeOpts,
    observer: &dyn Observer,
) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    if !local.ip().is_loopback() && opts.api_key.is_none() {
        observer.warn(&format!(
            "serving on {local} without --api-key: anyone who can reach this port can use the model."
        ));
    }
    Ok(listener)
}

/// What every connection thread shares.
struct Shared<'a> {
    model: &'a Model<'a>,
    opts: &'a ServeOpts,
    queue: engine::Queue,
    stats: &'a engine::Stats,
    observer: &'a dyn Observer,
    /// Connections open now (Q2).
    open: AtomicUsize,
    /// Set when the engine has stopped: the acceptor ends.
    stopping: AtomicBool,
}

/// Serves `listener` until the generator fails: this thread runs the
/// engine, an acceptor thread and one thread per connection run the HTTP.
pub fn serve(
    listener: TcpListener,
    gen: &mut dyn Generator,
    model: &Model<'_>,
    opts: &ServeOpts,
    observer: &dyn Observer,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Accept)?;
    let (queue, jobs) = engine::Queue::new(opts.queue_depth);
    let stats = engine::Stats::default();
    let shared = Shared {
        model,
        opts,
        queue,
        stats: &stats,
        observer,
        open: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    };
    observer.note(
        0,
        &format!(
            "serving {} on http://{local}/ (OpenAI API under /v1/)",
            model.id
        ),
    );
    std::thread::scope(|s| {
        let shared = &shared;
        let acceptor = s.spawn(move || accept(s, &listener, shared));
        let result = engine::run(gen, jobs, &stats);
        // No Release/Acquire pairing needed beyond the flag itself: the
        // acceptor only reads it to leave its loop.
        shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&wake_addr(local), Duration::from_secs(1));
        let accepted = acceptor.join().unwrap_or(Ok(()));
        result.map_err(|e| ServeError::Engine(Box::new(e)))?;
        accepted
    })
}

/// The address to connect to for waking an acceptor bound to `local`
/// (an unspecified address is reached through loopback).
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let mut a = local;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// Accepts connections until the engine stops, one thread each up to
/// `max_connections` (Q2).
fn accept<'s, 'e: 's>(
    s: &'s std::thread::Scope<'s, 'e>,
    listener: &TcpListener,
    shared: &'s Shared<'e>,
) -> Result<(), ServeError> {
    let mut failures = 0u32;
    loop {
        let conn = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let stream = match conn {
            Ok((stream, _)) => {
                failures = 0;
                stream
            }
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // back off and retry; give up only when it persists.
                failures += 1;
                if failures > 100 {
                    return Err(ServeError::Accept(e));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Relaxed: the count only bounds threads; it publishes no data.
        if shared.open.fetch_add(1, Ordering::Relaxed) >= shared.opts.max_connections {
            shared.open.fetch_sub(1, Ordering::Relaxed);
            conn::refuse_busy(stream);
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name("tpi-http".into())
            .spawn_scoped(s, move || {
                conn::handle(stream, shared);
                shared.open.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
