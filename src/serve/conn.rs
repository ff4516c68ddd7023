//! One connection: requests read in turn, routed, answered; generation
//! requests wait for the engine and relay its text.

use super::api::{self, ApiError, Kind, Meta, Sampling, Usage};
use super::engine::{Done, Event, FinishReason, Job};
use super::http::{self, read_request, Request, Response};
use super::Shared;
use crate::engine::{GenOptions, SamplerConfig};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The chat page, embedded.
const PAGE: &str = include_str!("page.html");
/// How often a waiting connection looks whether its client is still there (Q4).
const POLL: Duration = Duration::from_millis(50);
/// Longest a write to a client may block (a client that stops reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers 503 to a connection over the limit, without reading it.
pub(super) fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let e = ApiError::new(503, "server_busy", "too many open connections; retry later");
    let _ = respond_error(&mut stream, &e, false);
}

/// Most bytes [`linger`] reads and drops, and for how long.
const LINGER_BYTES: usize = 64 << 20;
const LINGER: Duration = Duration::from_secs(2);

/// After an error answered before the request was read whole (413, 431):
/// closes the sending side and drops what the client still sends for a
/// while, so that its unread bytes do not turn the close into a reset
/// that would destroy the answer before the client reads it.
fn linger(stream: &mut TcpStream) {
    use std::io::Read;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 16 << 10];
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => dropped += n,
        }
    }
}

/// Serves the requests of one connection until it closes.
pub(super) fn handle(mut stream: TcpStream, shared: &Shared<'_>) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut buf = Vec::new();
    loop {
        let req = match read_request(&mut stream, &mut buf, &shared.opts.limits) {
            Ok(r) => r,
            Err(e) => {
                if let Some(status) = e.status() {
                    let kind = if status == 408 {
                        "timeout"
                    } else {
                        "invalid_request_error"
                    };
                    let _ = respond_error(
                        &mut stream,
                        &ApiError::new(status, kind, e.to_string()),
                        false,
                    );
                    linger(&mut stream);
                }
                return;
            }
        };
        let t0 = Instant::now();
        let (status, keep) = match route(&mut stream, &req, shared) {
            Ok(r) => r,
            Err(e) => {
                let keep = req.keep_alive && e.status < 500;
                (
                    e.status,
                    respond_error(&mut stream, &e, keep).is_ok() && keep,
                )
            }
        };
        shared.observer.note(
            0,
            &format!(
                "{} {} {status} ({:.0} ms)",
                req.method,
                req.path,
                t0.elapsed().as_secs_f64() * 1e3
            ),
        );
        if !keep || !req.keep_alive {
            return;
        }
    }
}

/// Answers one request: `(status, whether the connection goes on)`, or
/// the error to answer.
fn route(
    stream: &mut TcpStream,
    req: &Request,
    shared: &Shared<'_>,
) -> Result<(u16, bool), ApiError> {
    let allowed = match req.path.as_str() {
        "/" | "/index.html" | "/health" | "/v1/models" => "GET",
        "/v1/chat/completions" | "/v1/completions" => "POST",
        _ => {
            return Err(ApiError::new(
                404,
                "invalid_request_error",
                format!("no route {} {}", req.method, req.path),
            ))
        }
    };
    if req.method != allowed && !(allowed == "GET" && req.method == "HEAD") {
        let e = ApiError::new(
            405,
            "invalid_request_error",
            format!("{} takes {allowed}, not {}", req.path, req.method),
        );
        let allow = format!("Allow: {allowed}");
        let body = e.body();
        let r = Response {
            status: 405,
            content_type: "application/json",
            body: body.as_bytes(),
            keep_alive: req.keep_alive,
            extra: &[&allow],
        };
        return Ok((405, r.write_to(stream).is_ok()));
    }
    if req.path.starts_with("/v1/") {
        authorize(req, shared)?;
    }
    let model = shared.model;
    let json = |stream: &mut TcpStream, body: String| {
        let ok = ok_response(stream, req, "application/json", body.as_bytes());
        Ok((200, ok))
    };
    match req.path.as_str() {
        "/" | "/index.html" => Ok((
            200,
            ok_response(stream, req, "text/html; charset=utf-8", PAGE.as_bytes()),
        )),
        "/health" => {
            let s = shared.stats;
            json(
                stream,
                serde_json::json!({
                    "status": "ok",
                    "model": model.id,
                    "generations": s.generations.load(Ordering::Relaxed),
                    "cancelled": s.cancelled.load(Ordering::Relaxed),
                    "last_completion_tokens": s.last_completion_tokens.load(Ordering::Relaxed),
                    "open_connections": shared.open.load(Ordering::Relaxed),
                })
                .to_string(),
            )
        }
        "/v1/models" => json(stream, api::models(&model.id, started_at())),
        "/v1/chat/completions" => {
            let (messages, sampling) = api::parse_chat(&req.body)?;
            check_model(&sampling, &model.id)?;
            let render = model.chat.as_ref().map_err(|why| {
                ApiError::invalid(
                    Some("messages"),
                    format!("chat is not available: {why}; use /v1/completions"),
                )
            })?;
            let text = render.render(&messages).map_err(|e| {
                ApiError::invalid(Some("messages"), format!("the chat template failed: {e}"))
            })?;
            let ids = model
                .tokenizer
                .encode_rendered(&text)
                .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
            generate(stream, req, shared, Kind::Chat, ids, sampling)
        }
        _ => {
            let (prompt, sampling) = api::parse_completion(&req.body)?;
            check_model(&sampling, &model.id)?;
            let ids = model
                .tokenizer
                .encode(&prompt)
                .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?;
            generate(stream, req, shared, Kind::Completion, ids, sampling)
        }
    }
}

/// A 200 with `body` (none for HEAD); whether the connection goes on.
fn ok_response(stream: &mut TcpStream, req: &Request, content_type: &str, body: &[u8]) -> bool {
    let body = if req.method == "HEAD" { &[][..] } else { body };
    let r = Response {
        status: 200,
        content_type,
        body,
        keep_alive: req.keep_alive,
        extra: &[],
    };
    r.write_to(stream).is_ok()
}

fn respond_error(stream: &mut TcpStream, e: &ApiError, keep_alive: bool) -> std::io::Result<()> {
    let body = e.body();
    let mut extra: Vec<&str> = Vec::new();
    if e.status == 401 {
        extra.push("WWW-Authenticate: Bearer");
    }
    if e.status == 503 {
        extra.push("Retry-After: 1");
    }
    Response {
        status: e.status,
        content_type: "application/json",
        body: body.as_bytes(),
        keep_alive,
        extra: &extra,
    }
    .write_to(stream)
}

/// A7: `Authorization: Bearer KEY` when a key is set.
fn authorize(req: &Request, shared: &Shared<'_>) -> Result<(), ApiError> {
    let Some(key) = &shared.opts.api_key else {
        return Ok(());
    };
    let given = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(
            ApiError::new(401, "invalid_request_error", "invalid API key")
                .with_code("invalid_api_key"),
        ),
        None => Err(ApiError::new(
            401,
            "invalid_request_error",
            "missing API key: send Authorization: Bearer KEY",
        )
        .with_code("invalid_api_key")),
    }
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A2: the loaded model answers; another id is 404.
fn check_model(s: &Sampling, id: &str) -> Result<(), ApiError> {
    match &s.model {
        Some(m) if m != id => Err(ApiError {
            status: 404,
            message: format!("the model '{m}' does not exist; this server runs '{id}'"),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        }),
        _ => Ok(()),
    }
}

/// When the server started (the model's `created`), seconds since 1970.
fn started_at() -> u64 {
    static AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *AT.get_or_init(now)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request id unique in this process.
fn request_id(kind: Kind) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    format!("{prefix}-{:x}{n:04x}", started_at())
}

/// A6 then Q1-Q4: checks the length, queues the job, relays its text.
fn generate(
    stream: &mut TcpStream,
    req: &Request,
    shared: &Shared<'_>,
    kind: Kind,
    ids: Vec<u32>,
    s: Sampling,
) -> Result<(u16, bool), ApiError> {
    let model = shared.model;
    let param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    if ids.is_empty() {
        return Err(ApiError::invalid(Some(param), "the prompt is empty"));
    }
    // A failed generation would end a cluster session: ids the model
    // cannot embed are refused here.
    if let Some(id) = ids.iter().find(|&&id| id as usize >= model.vocab) {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt holds token {id}, past the model's vocabulary of {}",
                model.vocab
            ),
        ));
    }
    if ids.len() >= model.context {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt is {} tokens; the model's context is {} tokens",
                ids.len(),
                model.context
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = model.context - ids.len();
    let length = match s.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!(
                    "the prompt ({} tokens) plus max_tokens ({m}) exceed the model's context of {} tokens",
                    ids.len(),
                    model.context
                ),
            )
            .with_code("context_length_exceeded"))
        }
        Some(m) => m,
        None => room,
    };
    let opts = GenOptions {
        length,
        sampler: SamplerConfig {
            temperature: s.temperature,
            top_k: 0,
            top_p: s.top_p,
            seed: s.seed.unwrap_or_else(fresh_seed),
        },
        eos_ids: model.eos_ids.clone(),
        ignore_eos: s.ignore_eos,
        keep_prompt_logits: false,
    };
    let (tx, rx) = mpsc::channel();
    let job = Job {
        prompt_ids: ids,
        opts,
        stop: s.stop.clone(),
        events: tx,
    };
    if !shared.queue.submit(job) {
        return Err(ApiError::new(
            503,
            "server_busy",
            "the request queue is full; retry later",
        ));
    }
    let meta = Meta {
        id: request_id(kind),
        created: now(),
        model: model.id.clone(),
        kind,
    };
    if s.stream {
        relay_stream(stream, &rx, &meta, &s)
    } else {
        collect(stream, req, &rx, &meta)
    }
}

/// A seed from the clock and a counter (requests without `seed`).
fn fresh_seed() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ N
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The next event, looking every [`POLL`] whether the client is gone
/// (`None`: gone, or the engine stopped).
fn next_event(stream: &TcpStream, rx: &mpsc::Receiver<Event>) -> Option<Event> {
    loop {
        match rx.recv_timeout(POLL) {
            Ok(e) => return Some(e),
            Err(RecvTimeoutError::Timeout) => {
                if http::client_gone(stream) {
                    return None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn usage(d: &Done) -> Usage {
    Usage {
        prompt_tokens: d.prompt_tokens,
        completion_tokens: d.completion_tokens,
        cached_tokens: d.cached_tokens,
    }
}

/// A non-stream answer: the text collected, then one response.
fn collect(
    stream: &mut TcpStream,
    req: &Request,
    rx: &mpsc::Receiver<Event>,
    meta: &Meta,
) -> Result<(u16, bool), ApiError> {
    let mut text = String::new();
    loop {
        // Q4: returning drops `rx`; the engine's next send fails and stops it.
        let Some(event) = next_event(stream, rx) else {
            return Ok((499, false));
        };
        match event {
            Event::Started => {}
            Event::Text(t) => {
                text.push_str(&t);
                if http::client_gone(stream) {
                    return Ok((499, false));
                }
            }
            Event::Done(Ok(d)) => {
                let body = meta.response(&text, d.finish.as_str(), usage(&d));
                return Ok((
                    200,
                    ok_response(stream, req, "application/json", body.as_bytes()),
                ));
            }
            Event::Done(Err(why)) => {
                return Err(ApiError::new(
                    500,
                    "server_error",
                    format!("generation failed: {why}"),
                ))
            }
        }
    }
}

/// A stream: SSE head, the role (chat), a chunk per piece, the finish,
/// the usage when asked, `[DONE]`; the connection then closes (H8).
fn relay_stream(
    stream: &mut TcpStream,
    rx: &mpsc::Receiver<Event>,
    meta: &Meta,
    s: &Sampling,
) -> Result<(u16, bool), ApiError> {
    let gone = Ok((499, false));
    if http::write_sse_head(stream).is_err() {
        return gone;
    }
    if meta.kind == Kind::Chat
        && http::write_sse_event(stream, &meta.chunk(true, "", None)).is_err()
    {
        return gone;
    }
    loop {
        let Some(event) = next_event(stream, rx) else {
            return gone;
        };
        let data = match event {
            Event::Started => continue,
            Event::Text(t) => meta.chunk(false, &t, None),
            Event::Done(Ok(d)) => {
                if d.finish == FinishReason::Cancelled {
                    return gone;
                }
                let mut last = meta.chunk(false, "", Some(d.finish.as_str()));
                if s.include_usage {
                    last.push_str("\n\ndata: ");
                    last.push_str(&meta.usage_chunk(usage(&d)));
                }
                last.push_str("\n\ndata: [DONE]");
                let _ = http::write_sse_event(stream, &last);
                return Ok((200, false));
            }
            Event::Done(Err(why)) => {
                let e = ApiError::new(500, "server_error", format!("generation failed: {why}"));
                let _ = http::write_sse_event(stream, &e.body());
                let _ = http::write_sse_event(stream, "[DONE]");
                return Ok((500, false));
            }
        };
        // Q4: a client gone or a failed write drops `rx` on return, which
        // stops the engine at its next piece.
        if http::client_gone(stream) || http::write_sse_event(stream, &data).is_err() {
            return gone;
        }
    }
}
