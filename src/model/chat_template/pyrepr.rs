//! Template values printed as Python prints them: `str()`, `repr()` and
//! numbers (also `json.dumps`'s), with the depth bound every walk over a
//! value shares.

use minijinja::value::{Value, ValueKind};
use minijinja::ErrorKind;
use std::fmt::Write as _;

/// Deepest nesting `tojson` and `str()` follow (Python's own limit is ~1000;
/// engine values cannot be cyclic, this only bounds the native stack).
pub(super) const MAX_VALUE_DEPTH: usize = 128;

/// The engine's error for a value a template cannot use.
pub(super) fn invalid(msg: impl Into<std::borrow::Cow<'static, str>>) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, msg)
}

/// A number as Python prints it: ints in full, floats as `repr(float)`
/// (`1.0`, `1e+16`, `1e-05`); `json` spells non-finite floats
/// `NaN`/`Infinity`, `str()` spells them `nan`/`inf`.
pub(super) fn py_number(out: &mut String, value: &Value, json: bool) {
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
pub(super) fn py_str(out: &mut String, value: &Value) -> Result<(), minijinja::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
