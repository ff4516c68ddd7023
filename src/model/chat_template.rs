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

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind};
use std::fmt::{self, Write as _};
use std::path::Path;

/// Largest accepted template (the biggest real ones are ~20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Largest accepted `tokenizer_config.json` (some list 200k added tokens).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// minijinja fuel per render: about 1M instructions or 64 MB of created
/// data. A 100-turn, 200 KB conversation through Llama 3.1's template uses
/// 19k (measured with `State::fuel_levels`; tests/chat_template.rs renders
/// it).
pub const FUEL: u64 = 1_000_000;
/// Deepest macro call nesting (real templates nest a few levels).
pub const RECURSION_LIMIT: usize = 64;
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

/// The message of a `raise_exception` call, carried as the engine error's
/// source so `render` can tell it from the engine's own errors.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

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

/// The message of a `raise_exception` anywhere in `err`'s source chain.
fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        cur = e.source();
    }
    None
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

/// The engine configured as transformers' `ImmutableSandboxedEnvironment`
/// (rule 1) with the bounds of rule 3.
fn environment(now: Option<i64>) -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build();
    // The default delimiters always build; keep the engine defaults if not.
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        if let Some(s) = value.as_str() {
            out.write_str(s).map_err(write_error)
        } else if value.is_undefined() {
            Ok(())
        } else {
            let mut s = String::new();
            py_str(&mut s, value)?;
            out.write_str(&s).map_err(write_error)
        }
    });
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, minijinja::Error> {
            Err(
                minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
                    .with_source(Raised(message)),
            )
        },
    );
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim);
    register_strftime_now(&mut env, now);
    env
}

fn write_error(_: fmt::Error) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output")
}

fn register_strftime_now(env: &mut Environment<'static>, now: Option<i64>) {
    env.add_function(
        "strftime_now",
        move |format: String| -> Result<String, minijinja::Error> {
            let secs = match now {
                Some(s) => s,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                    .unwrap_or(0),
            };
            strftime(&format, secs)
                .map_err(|msg| minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
}

/// Jinja's `trim` on Python's `str(value)`: strips whitespace, or the
/// given characters.
fn trim(value: &Value, chars: Option<String>) -> Result<String, minijinja::Error> {
    let mut s = String::new();
    if let Some(text) = value.as_str() {
        s.push_str(text);
    } else if !value.is_undefined() {
        py_str(&mut s, value)?;
    }
    Ok(match chars {
        Some(chars) => s.trim_matches(|c| chars.contains(c)).to_string(),
        None => s.trim().to_string(),
    })
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`; `ensure_ascii` and `indent` also
/// positionally (templates pass the others by keyword).
fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let pick = |pos: Option<Value>, key: &str| -> Result<Option<Value>, minijinja::Error> {
        let kw: Option<Value> = kwargs.get(key)?;
        Ok(kw.or(pos).filter(|v| !v.is_none() && !v.is_undefined()))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let sort_keys = pick(None, "sort_keys")?.is_some_and(|v| v.is_true());
    let indent = match pick(indent, "indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(usize::try_from(n).unwrap_or(0).min(64))),
            None => return Err(invalid("tojson: indent must be an int or a string")),
        },
    };
    let (item_sep, key_sep) = match pick(None, "separators")? {
        None => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
        Some(v) => {
            let item = v.get_item(&Value::from(0))?;
            let key = v.get_item(&Value::from(1))?;
            match (item.as_str(), key.as_str(), v.len()) {
                (Some(i), Some(k), Some(2)) => (i.to_string(), k.to_string()),
                _ => return Err(invalid("tojson: separators must be two strings")),
            }
        }
    };
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        ensure_ascii,
        sort_keys,
        indent,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    json_dump(&mut out, value, &opts, 0)?;
    Ok(out)
}

fn invalid(msg: impl Into<std::borrow::Cow<'static, str>>) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, msg)
}

/// Python `json.dumps` options.
struct JsonOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

/// Deepest nesting `tojson` and `str()` follow (Python's own limit is ~1000;
/// engine values cannot be cyclic, this only bounds the native stack).
const MAX_VALUE_DEPTH: usize = 128;

fn json_dump(
    out: &mut String,
    value: &Value,
    opts: &JsonOpts,
    depth: usize,
) -> Result<(), minijinja::Error> {
    if depth > MAX_VALUE_DEPTH {
        return Err(invalid("tojson: value nested too deeply"));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => py_number(out, value, true),
        ValueKind::String => json_string(out, value.as_str().unwrap_or(""), opts.ensure_ascii),
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, depth + 1);
                json_dump(out, item, opts, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let mut k = String::new();
                match key.kind() {
                    ValueKind::String => k.push_str(key.as_str().unwrap_or("")),
                    ValueKind::None => k.push_str("null"),
                    ValueKind::Bool => k.push_str(if key.is_true() { "true" } else { "false" }),
                    ValueKind::Number => py_number(&mut k, &key, true),
                    other => {
                        return Err(invalid(format!(
                            "tojson: keys must be str, int, float, bool or None, not {other}"
                        )))
                    }
                }
                entries.push((k, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, depth + 1);
                json_string(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                json_dump(out, item, opts, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        other => {
            return Err(invalid(format!(
                "tojson: object of type {other} is not JSON serializable"
            )))
        }
    }
    Ok(())
}

/// A JSON string literal as Python's `json.dumps` writes it.
fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as Python prints it: ints in full, floats as `repr(float)`
/// (`1.0`, `1e+16`, `1e-05`); `json` spells non-finite floats
/// `NaN`/`Infinity`, `str()` spells them `nan`/`inf`.
fn py_number(out: &mut String, value: &Value, json: bool) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        out.push_str(if json { "NaN" } else { "nan" });
    } else if f.is_infinite() {
        let sign = if f < 0.0 { "-" } else { "" };
        let _ = write!(out, "{sign}{}", if json { "Infinity" } else { "inf" });
    } else {
        out.push_str(&py_float_repr(f));
    }
}

/// Python's `repr(float)` from Rust's shortest round-trip `{:?}`: both
/// switch to exponent form below 1e-4 and from 1e16; Python signs the
/// exponent and pads it to two digits.
fn py_float_repr(f: f64) -> String {
    let s = format!("{f:?}");
    match s.split_once('e') {
        None => s,
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

/// Python's `str(value)` (strings as they are, containers as `repr`).
fn py_str(out: &mut String, value: &Value) -> Result<(), minijinja::Error> {
    match value.as_str() {
        Some(s) => {
            out.push_str(s);
            Ok(())
        }
        None => py_repr(out, value, 0),
    }
}

/// Python's `repr(value)` for the JSON-like values templates hold.
fn py_repr(out: &mut String, value: &Value, depth: usize) -> Result<(), minijinja::Error> {
    if depth > MAX_VALUE_DEPTH {
        return Err(invalid("value nested too deeply to print"));
    }
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => py_number(out, value, false),
        ValueKind::String => py_string_repr(out, value.as_str().unwrap_or("")),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, &item, depth + 1)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let item = value.get_item(&key)?;
                py_repr(out, &key, depth + 1)?;
                out.push_str(": ");
                py_repr(out, &item, depth + 1)?;
            }
            out.push('}');
        }
        // Engine objects (loop, macros, namespaces): the engine's own text.
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn py_string_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The UTC calendar fields of a Unix time.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    /// 1..=366
    yday: u32,
    /// 0 = Monday
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Splits `unix_secs` into UTC calendar fields by walking whole years and
/// months from 1970 (exact for any i64 time the clock can produce; times
/// beyond ±1e12 s are clamped).
fn civil(unix_secs: i64) -> Civil {
    let secs = unix_secs.clamp(-1_000_000_000_000, 1_000_000_000_000);
    let mut days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400) as u32;
    // 1970-01-01 was a Thursday (weekday 3 counting Monday as 0).
    let weekday = (days + 3).rem_euclid(7) as u32;
    // Whole 400-year cycles (146097 days) first, then single years.
    let mut year = 1970 + 400 * days.div_euclid(146_097);
    days = days.rem_euclid(146_097);
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let yday = days as u32 + 1;
    let mut month = 1u32;
    let mut rest = days as u32;
    loop {
        let len = match month {
            2 if is_leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if rest < len || month == 12 {
            break;
        }
        rest -= len;
        month += 1;
    }
    Civil {
        year,
        month,
        day: rest + 1,
        yday,
        weekday,
        hour: tod / 3600,
        minute: tod / 60 % 60,
        second: tod % 60,
    }
}

/// Python's `datetime.strftime` in the C locale, UTC, for the codes
/// `%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %F %T %%` (and `%-d`,
/// `%-m`, `%-H`, `%-I`, `%-M`, `%-S`: no padding, as glibc); any other
/// code is an error naming it.
pub fn strftime(format: &str, unix_secs: i64) -> Result<String, String> {
    let t = civil(unix_secs);
    let hour12 = match t.hour % 12 {
        0 => 12,
        h => h,
    };
    let month = MONTHS[(t.month - 1) as usize % 12];
    let weekday = WEEKDAYS[t.weekday as usize % 7];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut code = chars.next();
        let unpadded = code == Some('-');
        if unpadded {
            code = chars.next();
        }
        let num = |out: &mut String, v: u32| {
            if unpadded {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:02}");
            }
        };
        match code {
            Some('a') if !unpadded => out.push_str(&weekday[..3]),
            Some('A') if !unpadded => out.push_str(weekday),
            Some('b') if !unpadded => out.push_str(&month[..3]),
            Some('B') if !unpadded => out.push_str(month),
            Some('d') => num(&mut out, t.day),
            Some('e') if !unpadded => {
                let _ = write!(out, "{:>2}", t.day);
            }
            Some('H') => num(&mut out, t.hour),
            Some('I') => num(&mut out, hour12),
            Some('j') if !unpadded => {
                let _ = write!(out, "{:03}", t.yday);
            }
            Some('m') => num(&mut out, t.month),
            Some('M') => num(&mut out, t.minute),
            Some('p') if !unpadded => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            Some('S') => num(&mut out, t.second),
            Some('y') if !unpadded => {
                let _ = write!(out, "{:02}", t.year.rem_euclid(100));
            }
            Some('Y') if !unpadded => {
                let _ = write!(out, "{}", t.year);
            }
            Some('F') if !unpadded => {
                let _ = write!(out, "{}-{:02}-{:02}", t.year, t.month, t.day);
            }
            Some('T') if !unpadded => {
                let _ = write!(out, "{:02}:{:02}:{:02}", t.hour, t.minute, t.second);
            }
            Some('%') if !unpadded => out.push('%'),
            Some(other) => {
                let dash = if unpadded { "-" } else { "" };
                return Err(format!(
                    "strftime_now: unsupported format code %{dash}{other}"
                ));
            }
            None => return Err("strftime_now: format ends with a lone %".to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_matches_known_dates() {
        // 2026-03-05 09:07:02 UTC, a Thursday (day 64 of the year).
        let t = civil(1_772_701_622);
        assert_eq!(
            t,
            Civil {
                year: 2026,
                month: 3,
                day: 5,
                yday: 64,
                weekday: 3,
                hour: 9,
                minute: 7,
                second: 2
            }
        );
        // 2024-02-29 (leap day), a Thursday; 1969-12-31 23:59:59, a Wednesday.
        let leap = civil(1_709_164_800);
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.weekday),
            (2024, 2, 29, 3)
        );
        let before = civil(-1);
        assert_eq!(
            (
                before.year,
                before.month,
                before.day,
                before.weekday,
                before.hour
            ),
            (1969, 12, 31, 2, 23)
        );
        // 2000-12-31, day 366 of a leap century year.
        let end = civil(978_220_800);
        assert_eq!(
            (end.year, end.month, end.day, end.yday),
            (2000, 12, 31, 366)
        );
    }

    #[test]
    fn strftime_formats_python_codes() {
        let t = 1_772_701_622; // 2026-03-05 09:07:02 UTC
        assert_eq!(strftime("%d %b %Y", t).as_deref(), Ok("05 Mar 2026"));
        assert_eq!(
            strftime("%A %B %-d, %I:%M %p (%j) %y %F %T %e %%", t).as_deref(),
            Ok("Thursday March 5, 09:07 AM (064) 26 2026-03-05 09:07:02  5 %")
        );
        assert!(strftime("%Q", t).unwrap_err().contains("%Q"));
        assert!(strftime("50%", t).is_err());
        // Extreme clocks are clamped, not panics.
        assert!(strftime("%Y", i64::MAX).is_ok());
        assert!(strftime("%Y", i64::MIN).is_ok());
    }

    #[test]
    fn py_float_repr_matches_python() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }
}
