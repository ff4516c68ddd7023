//! A model's own chat template (the Jinja `chat_template` of its HF
//! `tokenizer_config.json`, or GGUF `tokenizer.chat_template`) rendered the
//! way HF transformers' `apply_chat_template` renders it.
//!
//! The template is untrusted code from a model download; the rules:
//!
//! 1. **Same environment as transformers** (`chat_template_utils.py`,
//!    `_compile_jinja_template`): `trim_blocks` and `lstrip_blocks` on, no
//!    trailing newline kept, no auto-escaping, `{% break %}`/`{% continue %}`,
//!    `raise_exception(msg)` ends the render with the template's `msg`
//!    ([`ChatTemplateError::Raised`]), `strftime_now(fmt)` formats the current
//!    time (UTC; see [`strftime`] for the codes), and `tojson` is Python's
//!    `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//!    sort_keys=False)` with those keyword arguments, not Jinja's HTML-escaping
//!    one. Python string/dict methods (`.strip()`, `.startswith()`,
//!    `.title()`, `.split()`, `.items()`, ...) come from `minijinja-contrib`'s
//!    `pycompat`. Values print as Python's `str()` does (`None`, `True`,
//!    `['a']`), and `trim` stringifies like Python before stripping, so a
//!    non-string `content` renders as transformers renders it.
//! 2. **Same inputs as transformers**: the context is `messages`,
//!    `add_generation_prompt`, `tools` and `documents` (none unless given),
//!    `bos_token`/`eos_token` when the model has them, then any extra
//!    variables the caller passes (`date_string`, `tools`, ...). A message key
//!    whose value is JSON `null` is left out, and an empty conversation is
//!    refused before rendering, as transformers does.
//! 3. **Bounded**: a template is at most [`MAX_TEMPLATE_BYTES`]; a render
//!    gets [`FUEL`] units of minijinja fuel (one per instruction, one per 64
//!    bytes of data created, so both time and memory are bounded) and at most
//!    [`RECURSION_LIMIT`] nested macro calls; the parser stops at its own
//!    nesting limit. A hostile template ends in an error, never a hang, an
//!    out-of-memory abort or a stack overflow (one gap: see below).
//! 4. **Errors name the template's origin** (a file, a GGUF key) and keep the
//!    engine's error as `source()`; nothing here panics on any input.
//!
//! Known gap in rule 3 (minijinja 3.1.0): list concatenation with `+` is
//! lazy and, once 32 concatenations are chained, copied into one list
//! without charging fuel, so a template that doubles a list ~30 times
//! (`{% set ns.l = ns.l + ns.l %}` in a loop) exhausts memory. Strings,
//! tuples, repetition and output are charged; only this path is not.
//!
//! Known differences from Python: dicts keep their keys sorted (Python keeps
//! insertion order; it shows only when a template iterates a caller-supplied
//! dict or prints it with `tojson`), and `strftime_now` knows the codes
//! listed at [`strftime`] only.
//!
//! The files: this one holds the API (the template, its messages, its
//! errors, the render context); `environment` the engine set up as
//! transformers sets up its own (rule 1 and the bounds of rule 3);
//! `filters` the `tojson` and `trim` filters; `pyrepr` values printed as
//! Python prints them; `strftime` the calendar behind `strftime_now`.

mod environment;
mod filters;
mod pyrepr;
mod strftime;

pub use environment::{FUEL, RECURSION_LIMIT};
pub use strftime::strftime;

use environment::{environment, raised_message, register_strftime_now};
use minijinja::value::Value;
use minijinja::Environment;
use pyrepr::{invalid, MAX_VALUE_DEPTH};
use std::fmt;
use std::path::Path;

/// Largest accepted template (the biggest real ones are ~20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Largest accepted `tokenizer_config.json` (some list 200k added tokens).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// The name the template is registered under (appears in engine errors).
const NAME: &str = "chat_template";

/// Why a chat template cannot be loaded or rendered; each names the origin.
#[derive(Debug)]
pub enum ChatTemplateError {
    /// The model ships no chat template (no `chat_template` key, or null).
    Missing { origin: String },
    /// tokenizer_config.json could not be read.
    Io {
        origin: String,
        source: std::io::Error,
    },
    /// A template or config file larger than allowed.
    TooLarge { origin: String, len: u64, max: u64 },
    /// tokenizer_config.json is not JSON, or a field has the wrong shape.
    Config { origin: String, msg: String },
    /// The template does not parse.
    Parse {
        origin: String,
        source: minijinja::Error,
    },
    /// `render` was given no messages (transformers refuses these too).
    NoMessages { origin: String },
    /// The template called `raise_exception(message)`.
    Raised {
        origin: String,
        message: String,
        source: minijinja::Error,
    },
    /// Any other failure while rendering (type errors, out of fuel, too
    /// deep recursion, unsupported strftime code, ...).
    Render {
        origin: String,
        source: minijinja::Error,
    },
}

impl fmt::Display for ChatTemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatTemplateError::Missing { origin } => write!(
                f,
                "{origin}: no chat template (the model has no `chat_template`; \
                 it cannot be used for chat)"
            ),
            ChatTemplateError::Io { origin, source } => {
                write!(f, "{origin}: cannot read: {source}")
            }
            ChatTemplateError::TooLarge { origin, len, max } => write!(
                f,
                "{origin}: {len} bytes, more than the {max} allowed for a chat template"
            ),
            ChatTemplateError::Config { origin, msg } => {
                write!(f, "{origin}: invalid tokenizer config: {msg}")
            }
            ChatTemplateError::Parse { origin, source } => {
                write!(f, "{origin}: chat template does not parse: {source}")
            }
            ChatTemplateError::NoMessages { origin } => {
                write!(f, "{origin}: cannot apply the chat template to no messages")
            }
            ChatTemplateError::Raised {
                origin, message, ..
            } => {
                write!(
                    f,
                    "{origin}: the chat template refused the messages: {message}"
                )
            }
            ChatTemplateError::Render { origin, source } => {
                write!(f, "{origin}: chat template failed: {source}")
            }
        }
    }
}

impl std::error::Error for ChatTemplateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChatTemplateError::Io { source, .. } => Some(source),
            ChatTemplateError::Parse { source, .. }
            | ChatTemplateError::Raised { source, .. }
            | ChatTemplateError::Render { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One chat message as the template sees it: `{"role": ..., "content": ...}`.
/// `content` is usually a string; any JSON (OpenAI content parts, null) is
/// passed through as transformers passes it (null leaves the key out).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: serde_json::Value,
}

impl Message {
    /// A message with text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: serde_json::Value::String(content.into()),
        }
    }

    /// The template's view of this message.
    fn to_value(&self) -> Result<Value, minijinja::Error> {
        let mut map = std::collections::BTreeMap::new();
        map.insert("role".to_string(), Value::from(self.role.as_str()));
        if !self.content.is_null() {
            map.insert("content".to_string(), json_to_value(&self.content, 0)?);
        }
        Ok(Value::from(map))
    }
}

/// A parsed chat template with the special tokens it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Parses `template`; `origin` names it in errors (a path, a GGUF key).
    /// `None` tokens are left undefined in the template (as transformers
    /// does for a tokenizer without them).
    pub fn new(
        origin: &str,
        template: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, ChatTemplateError> {
        let origin = origin.to_string();
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(ChatTemplateError::TooLarge {
                origin,
                len: template.len() as u64,
                max: MAX_TEMPLATE_BYTES as u64,
            });
        }
        let mut env = environment(None);
        if let Err(source) = env.add_template_owned(NAME, template.to_string()) {
            return Err(ChatTemplateError::Parse { origin, source });
        }
        Ok(ChatTemplate {
            env,
            origin,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template of a parsed HF `tokenizer_config.json`: `chat_template`
    /// as a string, or as a list of `{"name", "template"}` picking
    /// `"default"`; `bos_token`/`eos_token` as strings or
    /// `{"content": ...}` objects (null or absent: undefined).
    pub fn from_tokenizer_config(
        origin: &str,
        config: &serde_json::Value,
    ) -> Result<Self, ChatTemplateError> {
        let bad = |msg: String| ChatTemplateError::Config {
            origin: origin.to_string(),
            msg,
        };
        let Some(config) = config.as_object() else {
            return Err(bad("not a JSON object".into()));
        };
        let template = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => {
                return Err(ChatTemplateError::Missing {
                    origin: origin.to_string(),
                })
            }
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(serde_json::Value::Array(list)) => {
                let mut names = Vec::new();
                let mut default = None;
                for entry in list {
                    let name = entry.get("name").and_then(|n| n.as_str());
                    let text = entry.get("template").and_then(|t| t.as_str());
                    let (Some(name), Some(text)) = (name, text) else {
                        return Err(bad(
                            "chat_template list entries must be {\"name\": string, \
                             \"template\": string}"
                                .into(),
                        ));
                    };
                    if name == "default" {
                        default = Some(text);
                    }
                    names.push(name);
                }
                match default {
                    Some(text) => text,
                    None => {
                        return Err(bad(format!(
                            "chat_template lists no \"default\" template (has: {})",
                            names.join(", ")
                        )))
                    }
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    "chat_template is {}, not a string or a list of named templates",
                    json_kind(other)
                )))
            }
        };
        let bos =
            special_token(config.get("bos_token")).map_err(|m| bad(format!("bos_token {m}")))?;
        let eos =
            special_token(config.get("eos_token")).map_err(|m| bad(format!("eos_token {m}")))?;
        ChatTemplate::new(origin, template, bos, eos)
    }

    /// Reads and parses a `tokenizer_config.json`, then as
    /// [`ChatTemplate::from_tokenizer_config`].
    pub fn from_tokenizer_config_file(path: &Path) -> Result<Self, ChatTemplateError> {
        use std::io::Read;
        let origin = path.display().to_string();
        let io = |source| ChatTemplateError::Io {
            origin: origin.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ChatTemplateError::TooLarge {
                origin,
                len: bytes.len() as u64,
                max: MAX_CONFIG_BYTES,
            });
        }
        let config: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ChatTemplateError::Config {
                origin: origin.clone(),
                msg: e.to_string(),
            })?;
        ChatTemplate::from_tokenizer_config(&origin, &config)
    }

    /// Where the template came from, as given.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Pins `strftime_now` to `unix_secs` (seconds since 1970, UTC) instead
    /// of the system clock, for reproducible prompts and tests.
    pub fn with_fixed_now(mut self, unix_secs: i64) -> Self {
        register_strftime_now(&mut self.env, Some(unix_secs));
        self
    }

    /// Renders `messages`, ending with the assistant header when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// As [`ChatTemplate::render`], with extra template variables (e.g.
    /// `tools`, `date_string`) that override the defaults.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        if messages.is_empty() {
            return Err(ChatTemplateError::NoMessages {
                origin: self.origin.clone(),
            });
        }
        self.context(messages, add_generation_prompt, extra)
            .and_then(|ctx| {
                let template = self.env.get_template(NAME)?;
                template.render(ctx)
            })
            .map_err(|source| match raised_message(&source) {
                Some(message) => ChatTemplateError::Raised {
                    origin: self.origin.clone(),
                    message,
                    source,
                },
                None => ChatTemplateError::Render {
                    origin: self.origin.clone(),
                    source,
                },
            })
    }

    /// The variables the template sees (rule 2).
    fn context(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Value, minijinja::Error> {
        let mut ctx = std::collections::BTreeMap::new();
        let messages = messages
            .iter()
            .map(Message::to_value)
            .collect::<Result<Vec<Value>, _>>()?;
        ctx.insert("messages".to_string(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".to_string(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("tools".to_string(), Value::from(()));
        ctx.insert("documents".to_string(), Value::from(()));
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token".to_string(), Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token".to_string(), Value::from(eos.as_str()));
        }
        for (key, value) in extra {
            ctx.insert(key.clone(), json_to_value(value, 0)?);
        }
        Ok(Value::from(ctx))
    }
}

/// A JSON value as a template value (numbers keep int/float apart).
fn json_to_value(v: &serde_json::Value, depth: usize) -> Result<Value, minijinja::Error> {
    if depth > MAX_VALUE_DEPTH {
        return Err(invalid("message or variable nested too deeply"));
    }
    Ok(match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (None, None, Some(f)) => Value::from(f),
            (None, None, None) => Value::from(()),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(
            items
                .iter()
                .map(|item| json_to_value(item, depth + 1))
                .collect::<Result<Vec<Value>, _>>()?,
        ),
        serde_json::Value::Object(map) => {
            let mut out = std::collections::BTreeMap::new();
            for (k, item) in map {
                out.insert(k.clone(), json_to_value(item, depth + 1)?);
            }
            Value::from(out)
        }
    })
}

/// A special token field: a string, `{"content": string}`, or null/absent.
fn special_token(v: Option<&serde_json::Value>) -> Result<Option<&str>, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            _ => Err("object has no string \"content\"".into()),
        },
        Some(other) => Err(format!("is {}, not a string", json_kind(other))),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}
