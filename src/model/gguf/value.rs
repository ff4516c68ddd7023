//! GGUF metadata values (spec "gguf_metadata_value_type") and the key ->
//! value map with typed getters.
//!
//! Arrays are typed vectors, not vectors of [`Value`]: a vocabulary of
//! 150k tokens is one [`StringArray`] (one text buffer and the end of each
//! string), scores and token types are plain `Vec<f32>` / `Vec<i32>`, so
//! the tokenizer borrows them as slices.

use std::collections::HashMap;
use std::fmt;

use super::error::GgufError;

/// A metadata value's type id (spec: `enum gguf_metadata_value_type:
/// uint32_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type with id `id`, if any.
    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.iter().copied().find(|t| *t as u32 == id)
    }

    /// The spelling in errors ("u32", "string", "array").
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Fewest bytes one value of this type takes in the file: the bound
    /// that turns a count read from the file into a length check before
    /// anything is allocated. A string is at least its u64 length; an
    /// array at least its u32 type and u64 length.
    pub fn min_encoded_bytes(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

/// Strings of one array, stored as one text buffer and each string's end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringArray {
    text: String,
    /// `ends[i]` is the end of string `i` in `text`; it starts at
    /// `ends[i - 1]` (0 for the first).
    ends: Vec<usize>,
}

impl StringArray {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)?,
        };
        self.text.get(start..end)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }

    /// Reserves room for `strings` more strings of `text_bytes` in total.
    pub(crate) fn reserve(&mut self, strings: usize, text_bytes: usize) {
        self.ends.reserve(strings);
        self.text.reserve(text_bytes);
    }
}

/// An array value: the element type and the elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(StringArray),
    /// Arrays of arrays, each with its own element type.
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The type as errors spell it: "u32", "array of string".
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.elem_type().name()),
            v => v.value_type().name().to_string(),
        }
    }

    /// An integer value of any width, widened to i128 (every GGUF integer
    /// fits), so one conversion serves every typed integer getter.
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// What a typed getter found instead of what it wanted.
enum Miss {
    /// Another type.
    Type,
    /// The right kind (an integer) but the value does not fit.
    Range,
}

/// The key -> value pairs of a GGUF header, in file order, with typed
/// getters whose errors name the file, the key, the wanted and the found
/// type.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    origin: String,
    pairs: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub(crate) fn new(origin: &str) -> Self {
        Metadata {
            origin: origin.to_string(),
            ..Self::default()
        }
    }

    /// Room for `n` more pairs.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.pairs.reserve(n);
        self.index.reserve(n);
    }

    /// Adds a pair; `Err(pair)` if the key is already present.
    pub(crate) fn insert(&mut self, key: String, value: Value) -> Result<(), String> {
        if self.index.contains_key(&key) {
            return Err(key);
        }
        self.index.insert(key.clone(), self.pairs.len());
        self.pairs.push((key, value));
        Ok(())
    }

    /// The file these pairs were read from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index
            .get(key)
            .and_then(|&i| self.pairs.get(i))
            .map(|p| &p.1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The value at `key` through `conv`, `None` if the key is absent.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'a Value) -> Result<T, Miss>,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        conv(v).map(Some).map_err(|miss| GgufError::WrongType {
            origin: self.origin.clone(),
            key: key.to_string(),
            expected,
            found: match (miss, v.as_i128()) {
                (Miss::Range, Some(n)) => format!("{} {n}", v.type_name()),
                _ => v.type_name(),
            },
        })
    }

    fn required<T>(&self, key: &str, got: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
        got?.ok_or_else(|| GgufError::MissingKey {
            origin: self.origin.clone(),
            key: key.to_string(),
        })
    }

    fn int<T: TryFrom<i128>>(
        &self,
        key: &str,
        expected: &'static str,
    ) -> Result<Option<T>, GgufError> {
        self.typed(key, expected, |v| {
            let n = v.as_i128().ok_or(Miss::Type)?;
            T::try_from(n).map_err(|_| Miss::Range)
        })
    }

    /// An integer of any GGUF integer type whose value fits u32.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.int(key, "u32")
    }
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.required(key, self.opt_u32(key))
    }

    /// An integer of any GGUF integer type whose value fits u64.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.int(key, "u64")
    }
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.required(key, self.opt_u64(key))
    }

    /// An integer of any GGUF integer type whose value fits i32.
    pub fn opt_i32(&self, key: &str) -> Result<Option<i32>, GgufError> {
        self.int(key, "i32")
    }
    pub fn get_i32(&self, key: &str) -> Result<i32, GgufError> {
        self.required(key, self.opt_i32(key))
    }

    /// An integer of any GGUF integer type whose value fits i64.
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.int(key, "i64")
    }
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.required(key, self.opt_i64(key))
    }

    /// An f32, or an f64 that is exactly an f32. Integers are not floats.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.typed(key, "f32", |v| match *v {
            Value::F32(x) => Ok(x),
            Value::F64(x) if f64::from(x as f32) == x || x.is_nan() => Ok(x as f32),
            Value::F64(_) => Err(Miss::Range),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.required(key, self.opt_f32(key))
    }

    /// An f32 or f64.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "f64", |v| match *v {
            Value::F32(x) => Ok(x.into()),
            Value::F64(x) => Ok(x),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.required(key, self.opt_f64(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "bool", |v| match *v {
            Value::Bool(b) => Ok(b),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.required(key, self.opt_bool(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "string", |v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.required(key, self.opt_str(key))
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&Array>, GgufError> {
        self.typed(key, "array", |v| match v {
            Value::Array(a) => Ok(a),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        self.required(key, self.opt_array(key))
    }

    /// An array of strings (a vocabulary, BPE merges).
    pub fn opt_str_array(&self, key: &str) -> Result<Option<&StringArray>, GgufError> {
        self.typed(key, "array of string", |v| match v {
            Value::Array(Array::String(a)) => Ok(a),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_str_array(&self, key: &str) -> Result<&StringArray, GgufError> {
        self.required(key, self.opt_str_array(key))
    }

    /// An array of f32 (token scores).
    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>, GgufError> {
        self.typed(key, "array of f32", |v| match v {
            Value::Array(Array::F32(a)) => Ok(a.as_slice()),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], GgufError> {
        self.required(key, self.opt_f32_array(key))
    }

    /// An array of i32 (token types).
    pub fn opt_i32_array(&self, key: &str) -> Result<Option<&[i32]>, GgufError> {
        self.typed(key, "array of i32", |v| match v {
            Value::Array(Array::I32(a)) => Ok(a.as_slice()),
            _ => Err(Miss::Type),
        })
    }
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32], GgufError> {
        self.required(key, self.opt_i32_array(key))
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: Vec<(&str, Value)>) -> Metadata {
        let mut m = Metadata::new("m.gguf");
        for (k, v) in pairs {
            m.insert(k.to_string(), v).unwrap();
        }
        m
    }

    #[test]
    fn integer_getters_convert_losslessly_by_value() {
        let m = meta(vec![
            ("a", Value::U8(7)),
            ("b", Value::I64(-1)),
            ("c", Value::U64(1 << 40)),
            ("d", Value::I32(5)),
        ]);
        assert_eq!(m.get_u32("a").unwrap(), 7);
        assert_eq!(m.get_u32("d").unwrap(), 5);
        assert_eq!(m.get_i64("b").unwrap(), -1);
        assert_eq!(m.get_u64("c").unwrap(), 1 << 40);
        let e = m.get_u32("b").unwrap_err().to_string();
        assert!(
            e.contains("m.gguf") && e.contains("`b`") && e.contains("u32"),
            "{e}"
        );
        assert!(e.contains("i64 -1"), "{e}");
        assert!(m.get_u32("c").is_err());
    }

    #[test]
    fn wrong_type_and_missing_key_name_the_key() {
        let m = meta(vec![
            ("s", Value::String("x".into())),
            ("f", Value::F64(0.1)),
        ]);
        let e = m.get_u32("s").unwrap_err().to_string();
        assert!(
            e.contains("`s`") && e.contains("u32") && e.contains("string"),
            "{e}"
        );
        assert!(m.get_f32("f").is_err(), "0.1 is not exactly an f32");
        assert_eq!(m.get_f64("f").unwrap(), 0.1);
        let e = m.get_str("nope").unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("m.gguf"), "{e}");
        assert_eq!(m.opt_str("nope").unwrap(), None);
        assert!(m
            .get_f32_array("s")
            .unwrap_err()
            .to_string()
            .contains("array of f32"));
    }

    #[test]
    fn duplicate_key_is_refused() {
        let mut m = Metadata::new("m");
        m.insert("k".into(), Value::Bool(true)).unwrap();
        assert_eq!(m.insert("k".into(), Value::Bool(false)), Err("k".into()));
    }

    #[test]
    fn string_array_indexes() {
        let mut a = StringArray::new();
        for s in ["", "ab", "é", ""] {
            a.push(s);
        }
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().collect::<Vec<_>>(), ["", "ab", "é", ""]);
        assert_eq!(a.get(2), Some("é"));
        assert_eq!(a.get(4), None);
    }

    #[test]
    fn value_type_ids() {
        for t in ValueType::ALL {
            assert_eq!(ValueType::from_id(t as u32), Some(t));
        }
        assert_eq!(ValueType::from_id(13), None);
    }
}
