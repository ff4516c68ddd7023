//! The minijinja environment as transformers' `_compile_jinja_template`
//! builds it (rule 1 of the module doc) with the bounds of rule 3, and the
//! `raise_exception` error it carries out of a render.

use super::filters::{tojson, trim};
use super::pyrepr::py_str;
use super::strftime::strftime;
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind};
use std::fmt;

/// minijinja fuel per render: about 1M instructions or 64 MB of created
/// data. A 100-turn, 200 KB conversation through Llama 3.1's template uses
/// 19k (measured with `State::fuel_levels`; tests/chat_template.rs renders
/// it).
pub const FUEL: u64 = 1_000_000;
/// Deepest macro call nesting (real templates nest a few levels).
pub const RECURSION_LIMIT: usize = 64;

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

/// The message of a `raise_exception` anywhere in `err`'s source chain.
pub(super) fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        cur = e.source();
    }
    None
}

/// The engine configured as transformers' `ImmutableSandboxedEnvironment`
/// (rule 1) with the bounds of rule 3.
pub(super) fn environment(now: Option<i64>) -> Environment<'static> {
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

pub(super) fn register_strftime_now(env: &mut Environment<'static>, now: Option<i64>) {
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
