// `model::gguf::parse` on a whole GGUF file: no panic, and an accepted
// header keeps the reader's promises (G3..G10 in src/model/gguf/header.rs):
// every tensor inside the file, aligned, sized by its type, no overlaps,
// names unique; a prefix of the file parses to the same header or asks for
// more bytes (what `gguf::read_header` relies on); `Gguf::from_bytes` agrees.
//
// Unlike the other targets, the body lives here, not in harness.rs:
// tests/fuzz_corpus.rs includes this file as a module (`#[path]`), so the
// stable replay runs the same function; `fuzz_target!` exists only under
// cargo-fuzz's `--cfg fuzzing`.
#![no_main]
// `fuzzing` is cargo-fuzz's cfg, unknown to the check-cfg list.
#![allow(unexpected_cfgs)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gguf_header(data);
});

/// Origin name in error messages.
const GGUF_ORIGIN: &str = "fuzz/model.gguf";

pub fn gguf_header(data: &[u8]) -> bool {
    use tpi::model::gguf::{parse, parse_prefix, Gguf, GgufError, Value};
    let header = match parse(data, GGUF_ORIGIN) {
        Ok(h) => h,
        Err(e) => {
            let _ = e.to_string();
            let _ = std::error::Error::source(&e);
            if let Ok(g) = Gguf::from_bytes(data, GGUF_ORIGIN) {
                panic!("from_bytes accepts what parse rejects: {g:?}");
            }
            return false;
        }
    };
    let file_len = data.len() as u64;
    assert!(
        header.alignment.is_power_of_two(),
        "alignment {}",
        header.alignment
    );
    assert_eq!(header.data_offset % header.alignment, 0, "data offset");
    let mut spans = Vec::with_capacity(header.tensors.len());
    let mut names = std::collections::HashSet::new();
    for t in &header.tensors {
        assert!(names.insert(t.name.as_str()), "{t:?}: name twice");
        assert!(t.name.len() <= 64, "{t:?}: name length");
        assert!(t.dims.len() <= 4 && !t.dims.contains(&0), "{t:?}: dims");
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        assert_eq!(
            n.and_then(|n| t.ggml_type.bytes_for(n)),
            Some(t.len),
            "{t:?}: len"
        );
        assert_eq!(
            t.row_len() % t.ggml_type.block_len(),
            0,
            "{t:?}: whole blocks"
        );
        assert!(t.offset >= header.data_offset, "{t:?}: before the data");
        assert_eq!(t.offset % header.alignment, 0, "{t:?}: misaligned");
        let end = t.offset.checked_add(t.len).expect("offset + len overflows");
        assert!(end <= file_len, "{t:?}: past the end of the file");
        spans.push((t.offset, end));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlapping tensors {w:?}");
    }
    // Every typed getter on every key: a value or an error, never a panic.
    let m = &header.metadata;
    for (key, v) in m.iter() {
        // By identity: a NaN value is not equal to itself.
        let by_index = m.get(key).is_some_and(|x| std::ptr::eq(x, v));
        assert!(by_index, "`{key}` by index");
        let _ = (
            m.get_u32(key),
            m.get_i64(key),
            m.get_u64(key),
            m.get_i32(key),
        );
        let _ = (
            m.get_f32(key),
            m.get_f64(key),
            m.get_bool(key),
            m.get_str(key),
        );
        let _ = (m.get_f32_array(key), m.get_i32_array(key), m.get_array(key));
        if let Value::Array(a) = v {
            assert_eq!(m.get_array(key).map(|x| x.len()).ok(), Some(a.len()));
        }
        if let Ok(strings) = m.get_str_array(key) {
            assert_eq!(strings.iter().count(), strings.len(), "`{key}` strings");
        }
    }
    // The file reader's prefixes: the same header, or "read more".
    for cut in [data.len() / 2, header.data_offset as usize] {
        let Some(prefix) = data.get(..cut) else {
            continue;
        };
        match parse_prefix(prefix, file_len, GGUF_ORIGIN) {
            Ok(h) => {
                assert_eq!(h.tensors, header.tensors, "prefix of {cut}");
                assert_eq!(h.data_offset, header.data_offset, "prefix of {cut}");
            }
            Err(GgufError::Truncated { .. }) => {}
            Err(e) => panic!("prefix of {cut} bytes: {e}, the whole file parses"),
        }
    }
    let g = Gguf::from_bytes(data, GGUF_ORIGIN).expect("from_bytes rejects what parse accepts");
    assert_eq!(g.tensors(), header.tensors.as_slice());
    for t in g.tensors() {
        assert_eq!(g.get(&t.name), Some(t));
    }
    true
}
