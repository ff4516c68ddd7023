//! The filters transformers' environment replaces: `tojson` as Python's
//! `json.dumps`, and `trim` on Python's `str()` of its value.

use super::pyrepr::{invalid, py_number, py_str, MAX_VALUE_DEPTH};
use minijinja::value::{Kwargs, Value, ValueKind};
use std::fmt::Write as _;

/// Jinja's `trim` on Python's `str(value)`: strips whitespace, or the
/// given characters.
pub(super) fn trim(value: &Value, chars: Option<String>) -> Result<String, minijinja::Error> {
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
pub(super) fn tojson(
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

/// Python `json.dumps` options.
struct JsonOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

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
