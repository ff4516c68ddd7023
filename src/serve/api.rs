//! The OpenAI-shaped JSON: request bodies in (A1-A4 in the [module
//! doc](super)), responses, stream chunks and errors out. Pure functions
//! of their inputs; nothing here touches a socket or the engine.

use serde_json::{json, Map, Value};

/// A chat message as the client sent it: `role` and `content` (a string,
/// or any JSON such as OpenAI content parts, passed to the template).
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: Value,
}

/// What to generate, from a request's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// The model the client named, if any.
    pub model: Option<String>,
    /// `max_tokens` (or `max_completion_tokens`); `None`: up to the context.
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    /// `None`: a fresh seed per request.
    pub seed: Option<u64>,
    /// Generation stops when the text contains one of these (not returned).
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk carrying the usage.
    pub include_usage: bool,
    /// Extension (as llama.cpp's server): keep generating past EOS.
    pub ignore_eos: bool,
}

/// Most stop strings a request may give (OpenAI allows 4).
pub const MAX_STOPS: usize = 16;
/// Most messages in a chat request.
pub const MAX_MESSAGES: usize = 4096;

/// An answer other than 200: status and OpenAI's error object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`, about `param` when given.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> String {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
        .to_string()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The body as a JSON object (A1).
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid(None, "the body must be a JSON object")),
    }
}

/// The fields every generation request shares (A2, A3).
fn sampling(m: &Map<String, Value>) -> Result<Sampling, ApiError> {
    let present = |k: &str| m.get(k).filter(|v| !v.is_null());
    let model = match present("model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid(Some("model"), "'model' must be a string")),
    };
    let number = |k: &'static str, lo: f64, hi: f64| -> Result<Option<f64>, ApiError> {
        match present(k) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x >= lo && x <= hi => Ok(Some(x)),
                _ => Err(ApiError::invalid(
                    Some(k),
                    format!("'{k}' must be a number in [{lo}, {hi}], got {v}"),
                )),
            },
        }
    };
    let count = |k: &'static str| -> Result<Option<u64>, ApiError> {
        match present(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ApiError::invalid(
                    Some(k),
                    format!("'{k}' must be a non-negative integer, got {v}"),
                )
            }),
        }
    };
    let flag = |k: &'static str| -> Result<bool, ApiError> {
        match present(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ApiError::invalid(
                Some(k),
                format!("'{k}' must be a boolean, got {v}"),
            )),
        }
    };
    if count("n")?.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            Some("n"),
            "only one choice per request (n = 1)",
        ));
    }
    let max_tokens = match count("max_tokens")? {
        Some(n) => Some(n),
        None => count("max_completion_tokens")?,
    };
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                "'max_tokens' must be at least 1",
            ))
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let stop = match present("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) if list.len() <= MAX_STOPS => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid(Some("stop"), "'stop' entries must be strings"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("'stop' must be a string or a list of at most {MAX_STOPS} strings"),
            ))
        }
    };
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let include_usage = match present("stream_options") {
        None => false,
        Some(Value::Object(o)) => matches!(o.get("include_usage"), Some(Value::Bool(true))),
        Some(_) => {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "'stream_options' must be an object",
            ))
        }
    };
    Ok(Sampling {
        model,
        max_tokens,
        temperature: number("temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: number("top_p", 0.0, 1.0)?.map_or(1.0, |p| if p > 0.0 { p } else { 1e-6 }) as f32,
        seed: count("seed")?,
        stop,
        stream: flag("stream")?,
        include_usage,
        ignore_eos: flag("ignore_eos")?,
    })
}

/// A `/v1/chat/completions` body: its messages and sampling (A1-A4).
pub fn parse_chat(body: &[u8]) -> Result<(Vec<ChatMessage>, Sampling), ApiError> {
    let m = object(body)?;
    let list = match m.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "'messages' is required",
            ))
        }
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "'messages' must be a list",
            ))
        }
    };
    if list.is_empty() || list.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            Some("messages"),
            format!(
                "'messages' must hold 1 to {MAX_MESSAGES} messages, got {}",
                list.len()
            ),
        ));
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, msg) in list.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str);
        let content = msg.get("content");
        let (Some(role), Some(content)) = (role, content) else {
            return Err(ApiError::invalid(
                Some("messages"),
                format!("messages[{i}] needs a string 'role' and a 'content'"),
            ));
        };
        if !matches!(content, Value::String(_) | Value::Array(_) | Value::Null) {
            return Err(ApiError::invalid(
                Some("messages"),
                format!("messages[{i}].content must be a string or a list of parts"),
            ));
        }
        messages.push(ChatMessage {
            role: role.to_string(),
            content: content.clone(),
        });
    }
    Ok((messages, sampling(&m)?))
}

/// A `/v1/completions` body: its prompt and sampling (A1-A3). A list
/// holding one string is taken as that string.
pub fn parse_completion(body: &[u8]) -> Result<(String, Sampling), ApiError> {
    let m = object(body)?;
    let prompt = match m.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(list)) if list.len() == 1 && list[0].is_string() => {
            list[0].as_str().unwrap_or_default().to_string()
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(Some("prompt"), "'prompt' is required"))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                Some("prompt"),
                "'prompt' must be a string (or a list of one string)",
            ))
        }
    };
    Ok((prompt, sampling(&m)?))
}

/// Token counts of a finished generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the last generation.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// Which endpoint a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// What every response and chunk of one request names.
#[derive(Clone, Debug)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub kind: Kind,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            // OpenAI's legacy completions stream objects are "text_completion" too.
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(self.object(chunk)));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model));
        m.insert("system_fingerprint".into(), Value::Null);
        m.insert("choices".into(), choices);
        m
    }

    /// The whole answer of a non-stream request.
    pub fn response(&self, text: &str, finish: &str, usage: Usage) -> String {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Completion => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": finish,
            }),
        };
        let mut m = self.envelope(false, json!([choice]));
        m.insert("usage".into(), usage.to_json());
        Value::Object(m).to_string()
    }

    /// A stream chunk: the assistant role first (chat), a piece of text,
    /// or the finish reason with empty content.
    pub fn chunk(&self, role: bool, text: &str, finish: Option<&str>) -> String {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = match (role, finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, None) => json!({"content": text}),
                    (false, Some(_)) => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        Value::Object(self.envelope(true, json!([choice]))).to_string()
    }

    /// The last chunk of a stream asked to include usage: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> String {
        let mut m = self.envelope(true, json!([]));
        m.insert("usage".into(), usage.to_json());
        Value::Object(m).to_string()
    }
}

/// `GET /v1/models`.
pub fn models(id: &str, created: u64) -> String {
    json!({"object": "list", "data": [
        {"id": id, "object": "model", "created": created, "owned_by": "tpi"}
    ]})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_fields_are_typed_and_ranged() {
        let (_, s) = parse_completion(br#"{"prompt":"a","stop":"x","max_tokens":3,"seed":7}"#)
            .expect("parse");
        assert_eq!(s.stop, vec!["x".to_string()]);
        assert_eq!(
            (s.max_tokens, s.seed, s.temperature),
            (Some(3), Some(7), 1.0)
        );
        for bad in [
            &br#"{"prompt":"a","temperature":"hot"}"#[..],
            br#"{"prompt":"a","temperature":9}"#,
            br#"{"prompt":"a","max_tokens":-1}"#,
            br#"{"prompt":"a","max_tokens":0}"#,
            br#"{"prompt":"a","stream":1}"#,
            br#"{"prompt":"a","stop":[1]}"#,
            br#"{"prompt":5}"#,
            br#"{"prompt":"a","model":3}"#,
            br#"{"prompt":"a","n":2}"#,
            br#"[1]"#,
            br#"{"#,
        ] {
            let e = parse_completion(bad).expect_err("refused");
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chat_needs_messages_with_role_and_content() {
        for bad in [
            &br#"{}"#[..],
            br#"{"messages":[]}"#,
            br#"{"messages":"hi"}"#,
            br#"{"messages":[{"content":"hi"}]}"#,
            br#"{"messages":[{"role":"user","content":5}]}"#,
        ] {
            let e = parse_chat(bad).expect_err("refused");
            assert_eq!(
                e.param,
                Some("messages"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let (m, _) =
            parse_chat(br#"{"messages":[{"role":"user","content":"hi"}]}"#).expect("parse");
        assert_eq!(m[0].content, json!("hi"));
    }

    #[test]
    fn error_body_is_openai_shaped() {
        let e = ApiError::new(404, "invalid_request_error", "no").with_code("model_not_found");
        let v: Value = serde_json::from_str(&e.body()).expect("json");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], Value::Null);
    }
}
