//! The GGUF reader (`tpi::model::gguf`): files built by the small writer
//! below round-trip every value type in v2 and v3; split files resolve each
//! tensor to its part and offset; every malformed input the parser guards
//! against (rules G1..G10, S1..S4 in its module docs) is an error naming
//! the file and the field, key or tensor, never a panic or a large
//! allocation; and the fixtures written by llama.cpp's own gguf-py
//! (`tools/gguf_fixture.py`) parse to what its GGUFReader read.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tpi::model::gguf::{
    parse, read_header, Array, GgmlType, Gguf, GgufError, StringArray, Value, MAX_HEADER_BYTES,
};

use crate::common::{fixture_dir, TempDir};

/// Builds GGUF files, including malformed ones: each piece can be written
/// raw, and the counts in the header can be overridden.
pub struct Writer {
    pub version: u32,
    /// Header counts; `None` counts what was added.
    pub n_tensors: Option<u64>,
    pub n_kv: Option<u64>,
    kvs: Vec<u8>,
    n_kv_added: u64,
    infos: Vec<u8>,
    n_tensors_added: u64,
    data: Vec<u8>,
    pub alignment: u64,
}

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// The bytes of `v` (without its type id).
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s.as_bytes()),
        Value::Array(a) => encode_array(a, out),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn encode_array(a: &Array, out: &mut Vec<u8>) {
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s.as_bytes())),
        Array::Array(v) => v.iter().for_each(|a| encode_array(a, out)),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
    }
}

impl Writer {
    pub fn new(version: u32) -> Writer {
        Writer {
            version,
            n_tensors: None,
            n_kv: None,
            kvs: Vec::new(),
            n_kv_added: 0,
            infos: Vec::new(),
            n_tensors_added: 0,
            data: Vec::new(),
            alignment: 32,
        }
    }

    /// A key-value pair; `general.alignment` also sets the data alignment.
    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        if let (Some(a), "general.alignment") = (v_u64(&v), key) {
            self.alignment = a;
        }
        let mut b = Vec::new();
        encode(&v, &mut b);
        self.kv_raw(key.as_bytes(), v.value_type() as u32, &b)
    }

    /// A pair from raw parts.
    pub fn kv_raw(&mut self, key: &[u8], type_id: u32, value: &[u8]) -> &mut Self {
        put_str(&mut self.kvs, key);
        self.kvs.extend_from_slice(&type_id.to_le_bytes());
        self.kvs.extend_from_slice(value);
        self.n_kv_added += 1;
        self
    }

    /// A tensor with its data, placed at the next aligned offset.
    pub fn tensor(&mut self, name: &str, dims: &[u64], t: GgmlType, data: &[u8]) -> &mut Self {
        let offset = self.data.len().next_multiple_of(self.alignment as usize);
        self.data.resize(offset, 0);
        self.data.extend_from_slice(data);
        self.tensor_info(name.as_bytes(), dims, t.id(), offset as u64)
    }

    /// A tensor of `dims` filled with `fill`, sized by its type.
    pub fn tensor_filled(&mut self, name: &str, dims: &[u64], t: GgmlType, fill: u8) -> &mut Self {
        let n = t.bytes_for(dims.iter().product()).unwrap() as usize;
        self.tensor(name, dims, t, &vec![fill; n])
    }

    /// A tensor info from raw parts (no data added).
    pub fn tensor_info(
        &mut self,
        name: &[u8],
        dims: &[u64],
        type_id: u32,
        offset: u64,
    ) -> &mut Self {
        put_str(&mut self.infos, name);
        self.infos
            .extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&type_id.to_le_bytes());
        self.infos.extend_from_slice(&offset.to_le_bytes());
        self.n_tensors_added += 1;
        self
    }

    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        let n_tensors = self.n_tensors.unwrap_or(self.n_tensors_added);
        out.extend_from_slice(&n_tensors.to_le_bytes());
        out.extend_from_slice(&self.n_kv.unwrap_or(self.n_kv_added).to_le_bytes());
        out.extend_from_slice(&self.kvs);
        out.extend_from_slice(&self.infos);
        if !self.data.is_empty() {
            let start = out.len().next_multiple_of(self.alignment.max(1) as usize);
            out.resize(start, 0);
            out.extend_from_slice(&self.data);
        }
        out
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }
}

fn v_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        _ => None,
    }
}

fn strings(items: &[&str]) -> StringArray {
    let mut a = StringArray::new();
    items.iter().for_each(|s| a.push(s));
    a
}

/// One value of every type, arrays of every element type, nested arrays.
fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("t.u8", Value::U8(255)),
        ("t.i8", Value::I8(-128)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.u32", Value::U32(u32::MAX)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.f32", Value::F32(-0.375)),
        ("t.bool", Value::Bool(true)),
        ("t.false", Value::Bool(false)),
        ("t.string", Value::String("naïve ☃".into())),
        ("t.empty", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(1e300)),
        ("llama.block_count", Value::U32(2)),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-1, 1]))),
        ("a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-2, 2]))),
        ("a.u32", Value::Array(Array::U32(vec![7]))),
        ("a.i32", Value::Array(Array::I32(vec![1, -1, 3]))),
        ("a.f32", Value::Array(Array::F32(vec![0.5, -2.0, 3.25]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false]))),
        (
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(strings(&["<s>", "", "▁é", "x"]))),
        ),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MIN]))),
        ("a.f64", Value::Array(Array::F64(vec![0.1, -0.0]))),
        ("a.empty", Value::Array(Array::F32(Vec::new()))),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::String(strings(&["a"])),
                Array::Array(vec![Array::U8(vec![9])]),
                Array::Bool(Vec::new()),
            ])),
        ),
    ]
}

fn every_value_file(version: u32) -> (Writer, Vec<(&'static str, Value)>) {
    let pairs = every_value();
    let mut w = Writer::new(version);
    for (k, v) in &pairs {
        w.kv(k, v.clone());
    }
    w.tensor_filled("a", &[32, 2], GgmlType::Q8_0, 1)
        .tensor_filled("b", &[3], GgmlType::F32, 2)
        .tensor_filled("c", &[256, 1, 2], GgmlType::Q4_K, 3)
        .tensor_filled("d", &[], GgmlType::BF16, 4);
    (w, pairs)
}

#[test]
fn v2_and_v3_round_trip_every_value_type() {
    for version in [2, 3] {
        let (w, pairs) = every_value_file(version);
        let bytes = w.bytes();
        let h = parse(&bytes, "mem.gguf").unwrap();
        assert_eq!(h.version, version);
        let got: Vec<(&str, &Value)> = h.metadata.iter().collect();
        let want: Vec<(&str, &Value)> = pairs.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(got, want, "v{version}");
        assert_eq!(h.alignment, 32);
        let t: Vec<(&str, &[u64], GgmlType, u64)> = h
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dims.as_slice(), t.ggml_type, t.len))
            .collect();
        assert_eq!(
            t,
            [
                ("a", &[32, 2][..], GgmlType::Q8_0, 68),
                ("b", &[3][..], GgmlType::F32, 12),
                ("c", &[256, 1, 2][..], GgmlType::Q4_K, 288),
                ("d", &[][..], GgmlType::BF16, 2),
            ]
        );
        for (t, fill) in h.tensors.iter().zip(1u8..) {
            assert_eq!(t.offset % 32, 0);
            assert_eq!(t.offset, h.data_offset + (t.offset - h.data_offset));
            let data = &bytes[t.offset as usize..(t.offset + t.len) as usize];
            assert!(data.iter().all(|&b| b == fill), "{}", t.name);
        }
        assert_eq!(h.tensors[2].n_rows(), 2);
        assert_eq!(h.tensors[2].row_len(), 256);
        assert_eq!(h.tensors[3].n_elements(), 1);
    }
}

#[test]
fn typed_getters_convert_and_name_the_key() {
    let (w, _) = every_value_file(3);
    let g = Gguf::from_bytes(&w.bytes(), "mem.gguf").unwrap();
    let m = g.metadata();
    assert_eq!(m.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(m.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(m.get_u32("t.u16").unwrap(), 65535);
    assert_eq!(m.get_i64("t.i8").unwrap(), -128);
    assert_eq!(m.get_str("general.architecture").unwrap(), "llama");
    assert!(m.get_bool("t.bool").unwrap());
    assert_eq!(m.get_f32("t.f32").unwrap(), -0.375);
    assert_eq!(m.get_f64("t.f32").unwrap(), -0.375);
    assert_eq!(m.get_f32_array("a.f32").unwrap(), &[0.5, -2.0, 3.25]);
    assert_eq!(m.get_i32_array("a.i32").unwrap(), &[1, -1, 3]);
    let vocab = m.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(vocab.iter().collect::<Vec<_>>(), ["<s>", "", "▁é", "x"]);
    for (key, getter_err) in [
        ("t.string", m.get_u32("t.string").unwrap_err()),
        ("t.i8", m.get_u32("t.i8").unwrap_err()),
        ("t.u64", m.get_i64("t.u64").unwrap_err()),
        ("a.f32", m.get_i32_array("a.f32").unwrap_err()),
        ("t.u32", m.get_f32("t.u32").unwrap_err()),
    ] {
        assert!(
            matches!(getter_err, GgufError::WrongType { .. }),
            "{getter_err}"
        );
        let s = getter_err.to_string();
        assert!(
            s.contains(&format!("`{key}`")) && s.contains("mem.gguf"),
            "{s}"
        );
    }
    let s = m.get_u32("t.string").unwrap_err().to_string();
    assert!(s.contains("expected u32, found string"), "{s}");
    let s = m.get_u32("t.i8").unwrap_err().to_string();
    assert!(s.contains("found i8 -128"), "{s}");
    let s = m.get_u32("llama.nope").unwrap_err().to_string();
    assert!(s.contains("`llama.nope`") && s.contains("missing"), "{s}");
    assert_eq!(m.opt_u32("llama.nope").unwrap(), None);
    assert!(g
        .tensor("zzz")
        .unwrap_err()
        .to_string()
        .contains("mem.gguf"));
    assert_eq!(g.tensor("b").unwrap().len, 12);
}

/// A small valid file with every value type and four tensors.
pub fn small_valid() -> Vec<u8> {
    every_value_file(3).0.bytes()
}

#[test]
fn truncated_at_every_byte_is_an_error() {
    let bytes = small_valid();
    let full = parse(&bytes, "t.gguf").unwrap();
    let header_end = full.data_offset as usize;
    for n in 0..bytes.len() {
        let e = parse(&bytes[..n], "t.gguf").expect_err(&format!("prefix of {n} bytes"));
        let s = e.to_string();
        assert!(s.starts_with("t.gguf: "), "{n}: {s}");
        // Inside the header: truncated, naming what was being read, or a
        // count the bytes left cannot hold; once the header is complete
        // (its padding may be cut): a tensor out of bounds.
        if n >= header_end {
            assert!(matches!(e, GgufError::OutOfBounds { .. }), "{n}: {s}");
        } else {
            assert!(
                matches!(
                    e,
                    GgufError::Truncated { .. }
                        | GgufError::TooLong { .. }
                        | GgufError::OutOfBounds { .. }
                ),
                "{n}: {s}"
            );
        }
    }
    // Cuts inside a value and inside a tensor info name what they cut.
    let messages: Vec<String> = (0..header_end)
        .map(|n| parse(&bytes[..n], "t.gguf").unwrap_err().to_string())
        .collect();
    for what in [
        "truncated: the element type of array `tokenizer.ggml.tokens`",
        "element 3 of array `tokenizer.ggml.tokens`",
        "truncated: the info of tensor `c`",
        "the metadata count is 30",
    ] {
        assert!(messages.iter().any(|m| m.contains(what)), "{what}");
    }
}

#[test]
fn file_reader_matches_in_memory_parse_and_names_the_file() {
    let dir = TempDir::new("gguf-file");
    let bytes = small_valid();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let g = Gguf::open(&path).unwrap();
    let h = parse(&bytes, "x").unwrap();
    assert_eq!(g.tensors(), h.tensors.as_slice());
    assert_eq!(g.files().len(), 1);
    assert_eq!(g.files()[0].len, bytes.len() as u64);
    // Cut inside the header and inside the data.
    for cut in [10, 200, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let s = Gguf::open(&path).unwrap_err().to_string();
        assert!(s.contains(&path.display().to_string()), "{cut}: {s}");
    }
    let e = Gguf::open(&dir.path().join("none.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn header_longer_than_the_first_read_is_read_in_growing_chunks() {
    // ~3.4 MiB of vocabulary: the reader's first 1 MiB is not enough.
    let dir = TempDir::new("gguf-big");
    let vocab: Vec<String> = (0..200_000).map(|i| format!("token-{i}")).collect();
    let mut a = StringArray::new();
    vocab.iter().for_each(|s| a.push(s));
    let mut w = Writer::new(3);
    w.kv("tokenizer.ggml.tokens", Value::Array(Array::String(a)))
        .kv(
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(vec![0.5; 200_000])),
        )
        .tensor_filled("w", &[32, 4], GgmlType::Q4_0, 7);
    let path = dir.path().join("big.gguf");
    w.write(&path);
    let t0 = Instant::now();
    let g = Gguf::open(&path).unwrap();
    let took = t0.elapsed();
    let m = g.metadata();
    let tokens = m.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 200_000);
    assert_eq!(tokens.get(123_456), Some("token-123456"));
    assert_eq!(
        m.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
        200_000
    );
    assert_eq!(g.tensor("w").unwrap().len, 72);
    eprintln!(
        "header of {} bytes parsed in {took:?}",
        g.files()[0].data_offset
    );
}

#[test]
fn split_parts_resolve_tensors_to_their_file_and_offset() {
    let dir = TempDir::new("gguf-split");
    let split_kvs = |w: &mut Writer, no: u16| {
        w.kv("split.no", Value::U16(no))
            .kv("split.count", Value::U16(2))
            .kv("split.tensors.count", Value::I32(3));
    };
    let mut p1 = Writer::new(3);
    p1.kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(1));
    split_kvs(&mut p1, 0);
    p1.tensor("tok", &[4, 2], GgmlType::F32, &[1; 32])
        .tensor("norm", &[4], GgmlType::F16, &[2; 8]);
    let mut p2 = Writer::new(3);
    split_kvs(&mut p2, 1);
    p2.kv("general.alignment", Value::U32(64))
        .tensor("out", &[32, 3], GgmlType::Q8_0, &[3; 102]);
    let path1 = dir.path().join("model-00001-of-00002.gguf");
    let path2 = dir.path().join("model-00002-of-00002.gguf");
    p1.write(&path1);
    p2.write(&path2);

    let g = Gguf::open(&path1).unwrap();
    assert_eq!(g.files().len(), 2);
    assert_eq!(g.files()[1].path, path2);
    assert_eq!(g.files()[1].alignment, 64);
    assert_eq!(g.metadata().get_u32("llama.block_count").unwrap(), 1);
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["tok", "norm", "out"]);
    for (name, file, fill, len) in [
        ("tok", 0, 1u8, 32u64),
        ("norm", 0, 2, 8),
        ("out", 1, 3, 102),
    ] {
        let t = g.tensor(name).unwrap();
        assert_eq!((t.file, t.len), (file, len), "{name}");
        let bytes = std::fs::read(&g.files()[t.file].path).unwrap();
        let data = &bytes[t.offset as usize..(t.offset + t.len) as usize];
        assert!(data.iter().all(|&b| b == fill), "{name}");
    }
    assert_eq!(g.tensor("out").unwrap().offset % 64, 0);

    // Part 2 opened directly: refused, pointing at part 1.
    let s = Gguf::open(&path2).unwrap_err().to_string();
    assert!(s.contains("part 1"), "{s}");

    // A missing part is named.
    std::fs::remove_file(&path2).unwrap();
    let e = Gguf::open(&path1).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::MissingSplit {
                part: 2,
                count: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("model-00002-of-00002.gguf"), "{e}");

    // A part that says another split.no.
    let mut bad = Writer::new(3);
    split_kvs(&mut bad, 0);
    bad.tensor("out", &[32, 3], GgmlType::Q8_0, &[3; 102]);
    bad.write(&path2);
    let s = Gguf::open(&path1).unwrap_err().to_string();
    assert!(
        s.contains("model-00002-of-00002.gguf") && s.contains("split.no"),
        "{s}"
    );

    // The same tensor in both parts.
    let mut dup = Writer::new(3);
    split_kvs(&mut dup, 1);
    dup.tensor("tok", &[4], GgmlType::F32, &[0; 16]);
    dup.write(&path2);
    let e = Gguf::open(&path1).unwrap_err();
    assert!(matches!(e, GgufError::DuplicateTensor { .. }), "{e}");
    assert!(e.to_string().contains("`tok`"), "{e}");

    // split.tensors.count disagreeing with the parts.
    let mut few = Writer::new(3);
    split_kvs(&mut few, 1);
    few.write(&path2);
    let s = Gguf::open(&path1).unwrap_err().to_string();
    assert!(s.contains("split.tensors.count"), "{s}");

    // Part 1 not named NAME-00001-of-00002.gguf.
    let odd = dir.path().join("model.gguf");
    std::fs::copy(&path1, &odd).unwrap();
    let s = Gguf::open(&odd).unwrap_err().to_string();
    assert!(s.contains("-00001-of-00002.gguf"), "{s}");
}

/// The error of parsing `w`'s bytes, which must come fast.
fn err(w: &Writer) -> GgufError {
    let bytes = w.bytes();
    let t0 = Instant::now();
    let e = parse(&bytes, "bad.gguf").expect_err("malformed file accepted");
    assert!(t0.elapsed() < Duration::from_secs(2), "slow to refuse: {e}");
    assert!(e.to_string().starts_with("bad.gguf: "), "{e}");
    e
}

/// A file with one valid pair and one tensor, for mutation.
fn base() -> Writer {
    let mut w = Writer::new(3);
    w.kv("general.architecture", Value::String("llama".into()));
    w
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = base().bytes();
    bytes[0] = b'g';
    let e = parse(&bytes, "bad.gguf").unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    for version in [0, 1, 4, u32::MAX] {
        let mut w = base();
        w.version = version;
        let e = err(&w);
        assert!(matches!(e, GgufError::BadVersion { .. }), "{e}");
        assert!(e.to_string().contains(&format!("version {version}")), "{e}");
    }
    let mut w = base();
    w.version = 3u32.swap_bytes();
    assert!(err(&w).to_string().contains("big-endian"));
}

#[test]
fn huge_counts_fail_fast_without_allocating() {
    for n in [1u64 << 40, u64::MAX, 3_000_000_000] {
        let mut w = base();
        w.n_tensors = Some(n);
        let e = err(&w);
        assert!(matches!(e, GgufError::TooLong { .. }), "{e}");
        assert!(e.to_string().contains("tensor count"), "{e}");
        let mut w = base();
        w.n_kv = Some(n);
        let e = err(&w);
        assert!(e.to_string().contains("metadata count"), "{e}");
    }
    // A string length in the billions, as a value and as a key.
    let mut w = base();
    let mut v = 3_000_000_000u64.to_le_bytes().to_vec();
    v.extend_from_slice(b"abc");
    w.kv_raw(b"k", 8, &v);
    let e = err(&w);
    assert!(matches!(e, GgufError::TooLong { .. }), "{e}");
    assert!(e.to_string().contains("`k`"), "{e}");
    let mut w = base();
    w.kv_raw(b"", 0, &[]);
    let mut bytes = w.bytes();
    let at = bytes.len() - 12; // the empty key's length
    bytes[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let e = parse(&bytes, "bad.gguf").unwrap_err();
    assert!(matches!(e, GgufError::OverLimit { .. }), "{e}");
    assert!(e.to_string().contains("metadata key 1"), "{e}");
    // Array lengths: u8, string, nested, f64 elements.
    for (elem, n) in [
        (0u32, 1u64 << 40),
        (8, 1 << 40),
        (9, 1 << 60),
        (12, u64::MAX / 4),
    ] {
        let mut w = base();
        let mut v = elem.to_le_bytes().to_vec();
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&[0; 64]);
        w.kv_raw(b"arr", 9, &v);
        let e = err(&w);
        assert!(matches!(e, GgufError::TooLong { .. }), "{elem}: {e}");
        assert!(e.to_string().contains("array `arr`"), "{e}");
    }
    // A tensor name length in the billions.
    let mut w = base();
    w.tensor_info(b"t", &[1], 0, 0);
    let mut bytes = w.bytes();
    let at = bytes.len() - (8 + 1 + 4 + 8 + 4 + 8);
    bytes[at..at + 8].copy_from_slice(&4_000_000_000u64.to_le_bytes());
    let e = parse(&bytes, "b").unwrap_err();
    assert!(matches!(e, GgufError::OverLimit { max: 64, .. }), "{e}");
    assert!(e.to_string().contains("the name of tensor 0"), "{e}");
}

#[test]
fn nested_array_depth_bomb_is_refused() {
    // 100k levels of [array of 1 array]: refused at MAX_ARRAY_DEPTH, no
    // stack overflow.
    let mut v = Vec::new();
    for _ in 0..100_000 {
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
    }
    let mut w = base();
    w.kv_raw(b"bomb", 9, &v);
    let e = err(&w);
    assert!(matches!(e, GgufError::ArrayTooDeep { .. }), "{e}");
    assert!(e.to_string().contains("`bomb`"), "{e}");
    // A nesting of 8 (the limit) is fine.
    let mut inner = Array::U8(vec![1]);
    for _ in 0..7 {
        inner = Array::Array(vec![inner]);
    }
    let mut w = base();
    w.kv("deep", Value::Array(inner));
    parse(&w.bytes(), "ok").unwrap();
}

#[test]
fn bad_values_and_keys() {
    let mut w = base();
    w.kv_raw(b"k", 13, &[0; 8]);
    assert!(matches!(
        err(&w),
        GgufError::UnknownValueType { type_id: 13, .. }
    ));
    let mut w = base();
    w.kv_raw(b"k", 9, &[13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(err(&w), GgufError::UnknownValueType { .. }));
    let mut w = base();
    w.kv_raw(b"flag", 7, &[2]);
    let e = err(&w);
    assert!(matches!(e, GgufError::BadBool { byte: 2, .. }) && e.to_string().contains("`flag`"));
    let mut w = base();
    w.kv_raw(b"flags", 9, &[7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 9]);
    assert!(matches!(err(&w), GgufError::BadBool { byte: 9, .. }));
    let mut w = base();
    w.kv("general.architecture", Value::String("again".into()));
    let e = err(&w);
    assert!(matches!(e, GgufError::DuplicateKey { .. }), "{e}");
    assert!(e.to_string().contains("`general.architecture`"), "{e}");
    let mut w = base();
    w.kv_raw(b"k\xff", 0, &[1]);
    assert!(matches!(err(&w), GgufError::NotUtf8 { .. }));
    let mut w = base();
    let mut v = Vec::new();
    put_str(&mut v, b"\xc3\x28");
    w.kv_raw(b"s", 8, &v);
    let e = err(&w);
    assert!(
        matches!(e, GgufError::NotUtf8 { .. }) && e.to_string().contains("`s`"),
        "{e}"
    );
    let mut w = base();
    w.kv_raw(&vec![b'k'; 65536], 0, &[1]);
    let e = err(&w);
    assert!(matches!(e, GgufError::OverLimit { len: 65536, .. }), "{e}");
    assert!(e.to_string().contains("metadata key 1"), "{e}");
}

#[test]
fn bad_alignment_values() {
    for (v, bad) in [
        (Value::U32(0), "0"),
        (Value::U32(3), "3"),
        (Value::U32(48), "48"),
        (Value::U64(1 << 40), "u64"),
        (Value::String("32".into()), "string"),
        (Value::I32(-32), "i32 -32"),
    ] {
        let mut w = base();
        w.kv_raw(b"general.alignment", v.value_type() as u32, &{
            let mut b = Vec::new();
            encode(&v, &mut b);
            b
        });
        let e = err(&w);
        let s = e.to_string();
        assert!(s.contains("general.alignment") && s.contains(bad), "{s}");
    }
    // 1 and 4096 are fine.
    for a in [1u32, 4096] {
        let mut w = base();
        w.kv("general.alignment", Value::U32(a))
            .tensor_filled("t", &[3], GgmlType::F32, 0);
        let h = parse(&w.bytes(), "ok").unwrap();
        assert_eq!(h.alignment, a as u64);
        assert_eq!(h.data_offset % a as u64, 0);
    }
}

#[test]
fn bad_tensor_infos() {
    let with = |f: &dyn Fn(&mut Writer)| {
        let mut w = base();
        w.tensor_filled("ok", &[8], GgmlType::F32, 0);
        f(&mut w);
        err(&w)
    };
    let e = with(&|w| {
        w.tensor_info(b"five", &[1, 1, 1, 1, 1], 0, 64);
    });
    assert!(
        matches!(e, GgufError::BadDims { .. }) && e.to_string().contains("`five`"),
        "{e}"
    );
    let e = with(&|w| {
        w.tensor_info(b"zero", &[4, 0], 0, 64);
    });
    assert!(
        e.to_string().contains("`zero`") && e.to_string().contains("is 0"),
        "{e}"
    );
    let e = with(&|w| {
        w.tensor_info(b"huge", &[1 << 32, 1 << 32, 1 << 32], 0, 64);
    });
    assert!(e.to_string().contains("overflows"), "{e}");
    let e = with(&|w| {
        w.tensor_info(b"bytes", &[1 << 62, 2], 0, 64);
    });
    assert!(e.to_string().contains("byte size overflows"), "{e}");
    for id in [4, 31, 36, 42, 1000] {
        let e = with(&|w| {
            w.tensor_info(b"q", &[32], id, 64);
        });
        assert!(matches!(e, GgufError::UnknownType { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("`q` has unknown ggml type {id}")),
            "{e}"
        );
    }
    let e = with(&|w| {
        w.tensor_info(b"q", &[48, 2], GgmlType::Q4_0.id(), 64);
    });
    assert!(
        matches!(
            e,
            GgufError::NotWholeBlocks {
                ne0: 48,
                block: 32,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("`q`") && e.to_string().contains("Q4_0"),
        "{e}"
    );
    let e = with(&|w| {
        w.tensor_info(b"k", &[128], GgmlType::Q6_K.id(), 64);
    });
    assert!(matches!(e, GgufError::NotWholeBlocks { .. }), "{e}");
    let e = with(&|w| {
        w.tensor_info(&[b'n'; 65], &[1], 0, 64);
    });
    assert!(
        matches!(
            e,
            GgufError::OverLimit {
                len: 65,
                max: 64,
                ..
            }
        ),
        "{e}"
    );
    let e = with(&|w| {
        w.tensor_info(b"ok", &[8], 0, 64);
    });
    assert!(
        matches!(e, GgufError::DuplicateTensor { .. }) && e.to_string().contains("`ok`"),
        "{e}"
    );
}

#[test]
fn bad_tensor_placement() {
    // Past the end: the data section has 32 bytes (tensor "ok").
    let mut w = base();
    w.tensor_filled("ok", &[8], GgmlType::F32, 0)
        .tensor_info(b"past", &[8], 0, 32);
    let e = err(&w);
    assert!(matches!(e, GgufError::OutOfBounds { .. }), "{e}");
    assert!(e.to_string().contains("`past`"), "{e}");
    let mut w = base();
    w.tensor_filled("ok", &[8], GgmlType::F32, 0)
        .tensor_info(b"wrap", &[8], 0, u64::MAX - 31);
    let e = err(&w);
    assert!(
        e.to_string().contains("`wrap`") && e.to_string().contains("overflows"),
        "{e}"
    );
    // Overlap: "b" starts inside "a".
    let mut w = base();
    w.tensor_filled("a", &[16], GgmlType::F32, 0)
        .tensor_info(b"b", &[8], 0, 32);
    let e = err(&w);
    assert!(
        matches!(e, GgufError::Overlap { offset, .. } if offset > 0),
        "{e}"
    );
    assert!(
        e.to_string().contains("`a`") && e.to_string().contains("`b`"),
        "{e}"
    );
    // Two tensors at the same offset.
    let mut w = base();
    w.tensor_filled("a", &[8], GgmlType::F32, 0)
        .tensor_info(b"b", &[8], 0, 0);
    assert!(matches!(err(&w), GgufError::Overlap { .. }));
    // Misaligned.
    let mut w = base();
    w.tensor_filled("a", &[16], GgmlType::F32, 0)
        .tensor_info(b"m", &[1], 0, 40);
    let e = err(&w);
    assert!(
        matches!(
            e,
            GgufError::Misaligned {
                offset: 40,
                alignment: 32,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("`m`"), "{e}");
}

#[test]
fn header_past_the_cap_is_refused() {
    // A string value of MAX_HEADER_BYTES in a file that has those bytes.
    let n = MAX_HEADER_BYTES + 16;
    let mut w = base();
    let mut v = (n as u64).to_le_bytes().to_vec();
    v.resize(8 + n, b'a');
    w.kv_raw(b"big", 8, &v);
    let bytes = w.bytes();
    let e = parse(&bytes, "bad.gguf").unwrap_err();
    assert!(matches!(e, GgufError::HeaderTooLarge { .. }), "{e}");
    // The same through a file: read in chunks, stopped at the cap.
    let dir = TempDir::new("gguf-cap");
    let path = dir.path().join("big.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let e = read_header(&path).unwrap_err();
    assert!(matches!(e, GgufError::HeaderTooLarge { .. }), "{e}");
}

#[test]
fn parsed_form_is_bounded_before_allocating() {
    // 3.5M empty nested arrays: 42 MB of header, ~200 MB as `Array`s.
    let n = 3_500_000u64;
    let mut v = 9u32.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    for _ in 0..n {
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
    let mut w = base();
    w.kv_raw(b"nest", 9, &v);
    let e = err(&w);
    assert!(matches!(e, GgufError::ParsedTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("array `nest`"), "{e}");
}

// ---------------------------------------------------------------------
// Oracle: the fixtures gguf-py wrote, against what its GGUFReader read.

/// A parsed value as the reader's JSON shows it: leaves of nested arrays
/// flattened, floats as f64.
fn to_json(v: &Value) -> Json {
    fn arr(a: &Array, out: &mut Vec<Json>) {
        match a {
            Array::U8(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::I8(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::U16(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::I16(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::U32(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::I32(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::F32(v) => out.extend(v.iter().map(|&x| Json::from(f64::from(x)))),
            Array::Bool(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::String(v) => out.extend(v.iter().map(Json::from)),
            Array::Array(v) => v.iter().for_each(|a| arr(a, out)),
            Array::U64(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::I64(v) => out.extend(v.iter().map(|&x| Json::from(x))),
            Array::F64(v) => out.extend(v.iter().map(|&x| Json::from(x))),
        }
    }
    match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::F32(x) => f64::from(*x).into(),
        Value::Bool(x) => (*x).into(),
        Value::String(s) => s.as_str().into(),
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        Value::F64(x) => (*x).into(),
        Value::Array(a) => {
            let mut out = Vec::new();
            arr(a, &mut out);
            Json::Array(out)
        }
    }
}

/// gguf-py's spelling of a value type.
fn py_type(t: tpi::model::gguf::ValueType) -> &'static str {
    use tpi::model::gguf::ValueType as T;
    match t {
        T::U8 => "UINT8",
        T::I8 => "INT8",
        T::U16 => "UINT16",
        T::I16 => "INT16",
        T::U32 => "UINT32",
        T::I32 => "INT32",
        T::F32 => "FLOAT32",
        T::Bool => "BOOL",
        T::String => "STRING",
        T::Array => "ARRAY",
        T::U64 => "UINT64",
        T::I64 => "INT64",
        T::F64 => "FLOAT64",
    }
}

/// The reader's type list: the value type, then for arrays the element
/// type of the first element at each level.
fn py_types(v: &Value) -> Vec<&'static str> {
    let mut out = vec![py_type(v.value_type())];
    let mut a = match v {
        Value::Array(a) => Some(a),
        _ => None,
    };
    while let Some(arr) = a {
        out.push(py_type(arr.elem_type()));
        a = match arr {
            Array::Array(v) => v.first(),
            _ => None,
        };
    }
    out
}

fn check_against_reader(file: &str, h: &tpi::model::gguf::Header, want: &Json) {
    assert_eq!(h.alignment, want["alignment"].as_u64().unwrap(), "{file}");
    assert_eq!(
        h.data_offset,
        want["data_offset"].as_u64().unwrap(),
        "{file}"
    );
    let fields = want["fields"].as_array().unwrap();
    assert_eq!(h.metadata.len(), fields.len(), "{file}");
    for (f, (key, v)) in fields.iter().zip(h.metadata.iter()) {
        assert_eq!(key, f["key"].as_str().unwrap(), "{file}");
        let types: Vec<&str> = f["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(py_types(v), types, "{file}: `{key}`");
        assert_eq!(to_json(v), f["value"], "{file}: `{key}`");
    }
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(h.tensors.len(), tensors.len(), "{file}");
    for (t, w) in h.tensors.iter().zip(tensors) {
        let name = &t.name;
        assert_eq!(name, w["name"].as_str().unwrap(), "{file}");
        assert_eq!(
            u64::from(t.ggml_type.id()),
            w["type"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            t.ggml_type.name(),
            w["type_name"].as_str().unwrap(),
            "{name}"
        );
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, shape, "{name}");
        assert_eq!(t.n_elements(), w["n_elements"].as_u64().unwrap(), "{name}");
        assert_eq!(t.len, w["n_bytes"].as_u64().unwrap(), "{name}");
        assert_eq!(t.offset, w["offset"].as_u64().unwrap(), "{name}");
    }
}

#[test]
fn gguf_py_fixtures_parse_as_its_reader_reads_them() {
    let dir = fixture_dir("gguf");
    let reader: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reader.json")).unwrap()).unwrap();
    let files = reader["files"].as_object().unwrap();
    assert_eq!(files.len(), 3);
    for (name, want) in files {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes.len() as u64,
            want["file_len"].as_u64().unwrap(),
            "{name}"
        );
        let h = parse(&bytes, name).unwrap();
        check_against_reader(name, &h, want);
        let (from_file, _) = read_header(&path).unwrap();
        assert_eq!(from_file.tensors, h.tensors, "{name}");
    }
    // The split pair, opened from part 1, holds mixed.gguf's tensors.
    let split = Gguf::open(&dir.join("split-00001-of-00002.gguf")).unwrap();
    let mixed = Gguf::open(&dir.join("mixed.gguf")).unwrap();
    assert_eq!(split.files().len(), 2);
    assert_eq!(split.tensors().len(), mixed.tensors().len());
    for t in mixed.tensors() {
        let s = split.tensor(&t.name).unwrap();
        assert_eq!((&s.dims, s.ggml_type, s.len), (&t.dims, t.ggml_type, t.len));
        let a = std::fs::read(&split.files()[s.file].path).unwrap();
        let b = std::fs::read(&mixed.files()[0].path).unwrap();
        assert_eq!(
            a[s.offset as usize..(s.offset + s.len) as usize],
            b[t.offset as usize..(t.offset + t.len) as usize],
            "{}",
            t.name
        );
    }
    assert_eq!(split.tensor("output.weight").unwrap().file, 1);
    let m = mixed.metadata();
    assert_eq!(m.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(m.get_str("test.string").unwrap(), "naïve ☃ text");
    assert_eq!(
        m.get_str_array("tokenizer.ggml.tokens").unwrap().get(3),
        Some("▁the")
    );
    assert_eq!(m.get_f32_array("tokenizer.ggml.scores").unwrap()[2], -2.25);
    assert_eq!(m.get_i32_array("tokenizer.ggml.token_type").unwrap()[5], 6);
}
