//! A model's safetensors shards, mmapped and read in place (zero copy):
//! single file or sharded with `model.safetensors.index.json`. The format
//! is [`header`]; its errors [`error`]; writers (fixtures, `make_model`)
//! [`writer`]. Everything from a file is validated before use: a malformed
//! file is a [`SafeTensorsError`] naming the file, the tensor and the
//! offset, never a panic.

pub mod error;
pub mod header;
pub mod writer;

pub use error::SafeTensorsError;
pub use header::{parse_header, TensorInfo, MAX_HEADER_BYTES, MAX_RANK, MAX_TENSORS};
pub use writer::{write, StreamWriter};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;

use std::path::Path;

use serde_json::Value;

/// Largest accepted `model.safetensors.index.json`.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Largest number of shards.
const MAX_SHARDS: usize = 4096;

pub use super::dtype::Dtype;

pub use super::files::FileId;
use super::files::ModelFiles;

/// All tensors of a model, across its shards.
pub struct SafeTensors {
    /// The shards, in index order.
    files: ModelFiles,
    tensors: HashMap<String, TensorInfo>,
}

impl fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeTensors")
            .field("shards", &self.files.names())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SafeTensorsError + '_ {
    move |source| SafeTensorsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Maps `path` as the next shard of `files` and parses its header.
fn open_shard(files: &mut ModelFiles, path: &Path) -> Result<Vec<TensorInfo>, SafeTensorsError> {
    let i = files.map(path).map_err(io_err(path))?;
    parse_header(files.bytes(i), &path.display().to_string())
}

impl SafeTensors {
    /// Opens `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json`. Every shard is mmapped.
    pub fn open_dir(dir: &Path) -> Result<Self, SafeTensorsError> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            let mut files = ModelFiles::default();
            let tensors = open_shard(&mut files, &single)?;
            return Self::assemble(files, vec![tensors]);
        }
        let index = dir.join("model.safetensors.index.json");
        if !index.is_file() {
            return Err(SafeTensorsError::NoModelFile {
                dir: dir.display().to_string(),
            });
        }
        let (files, weight_map) = read_index(&index)?;
        let mut mapped = ModelFiles::default();
        let mut shards = Vec::with_capacity(files.len());
        for f in &files {
            shards.push(open_shard(&mut mapped, &dir.join(f))?);
        }
        let st = Self::assemble(mapped, shards)?;
        for (tensor, file) in &weight_map {
            let in_shard = st
                .tensors
                .get(tensor)
                .map(|t| files.get(t.shard) == Some(file));
            if in_shard != Some(true) {
                return Err(SafeTensorsError::Index {
                    origin: index.display().to_string(),
                    msg: format!("weight_map says `{tensor}` is in {file}, but it is not there"),
                });
            }
        }
        Ok(st)
    }

    /// Parses an in-memory safetensors file (e.g. one embedded in the
    /// binary). The bytes are copied into an 8-byte aligned buffer.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, SafeTensorsError> {
        let mut files = ModelFiles::default();
        let i = files.copy(bytes, origin);
        let tensors = parse_header(files.bytes(i), origin)?;
        Self::assemble(files, vec![tensors])
    }

    /// `shards[i]` are the tensors of file `i` of `files`.
    fn assemble(files: ModelFiles, shards: Vec<Vec<TensorInfo>>) -> Result<Self, SafeTensorsError> {
        let mut tensors: HashMap<String, TensorInfo> = HashMap::new();
        for (i, infos) in shards.into_iter().enumerate() {
            for mut t in infos {
                t.shard = i;
                if let Some(prev) = tensors.get(&t.name) {
                    return Err(SafeTensorsError::Duplicate {
                        name: t.name,
                        first: files.name(prev.shard).to_string(),
                        second: files.name(i).to_string(),
                    });
                }
                tensors.insert(t.name.clone(), t);
            }
        }
        Ok(SafeTensors { files, tensors })
    }

    /// The shard files.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// The tensor `name`, or `MissingTensor` naming it and the file(s).
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, SafeTensorsError> {
        self.tensors
            .get(name)
            .ok_or_else(|| SafeTensorsError::MissingTensor {
                name: name.to_string(),
                files: self.files.names(),
            })
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// All tensors, in no particular order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    /// The tensor's raw bytes. `t` must come from this `SafeTensors`; for a
    /// foreign `TensorInfo` whose range is not in the shard the result is
    /// empty rather than a panic.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        let shard = self.shard_bytes(t.shard);
        t.offset
            .checked_add(t.len)
            .and_then(|end| shard.get(t.offset..end))
            .unwrap_or(&[])
    }

    /// The whole shard file (empty for an unknown shard index).
    pub fn shard_bytes(&self, shard: usize) -> &[u8] {
        self.files.bytes(shard)
    }

    /// The shard's path (or origin), for messages.
    pub fn shard_name(&self, shard: usize) -> &str {
        self.files.name(shard)
    }

    pub fn num_shards(&self) -> usize {
        self.files.len()
    }

    /// Releases the resident pages of `t`'s bytes in this process (see
    /// `crate::sys::release_range`); the bytes stay readable. A no-op for in-memory
    /// shards. Used after a tensor has been copied out (slicing), so the
    /// source model does not accumulate in the resident set.
    pub fn release(&self, t: &TensorInfo) -> std::io::Result<()> {
        self.files.release(t.shard, t.offset, t.len)
    }

    /// A 1-D tensor of `len` values widened to f32 (norms, biases).
    pub fn vector_f32(&self, name: &str, len: usize) -> Result<Vec<f32>, SafeTensorsError> {
        let t = self.tensor_shaped(name, &[len])?;
        Ok(super::dtype::widen(t.dtype, self.bytes(t)))
    }

    /// The tensor `name`, checked to have exactly `shape`.
    pub fn tensor_shaped(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<&TensorInfo, SafeTensorsError> {
        let t = self.tensor(name)?;
        if t.shape != shape {
            return Err(SafeTensorsError::ShapeMismatch {
                name: name.to_string(),
                file: self.shard_name(t.shard).to_string(),
                expected: shape.to_vec(),
                actual: t.shape.clone(),
            });
        }
        Ok(t)
    }
}

/// Distinct shard file names in first-seen order, and (tensor, file) pairs.
type IndexContents = (Vec<String>, Vec<(String, String)>);

/// Reads `model.safetensors.index.json`.
fn read_index(path: &Path) -> Result<IndexContents, SafeTensorsError> {
    use std::io::Read;
    let origin = path.display().to_string();
    let bad = |msg: String| SafeTensorsError::Index {
        origin: origin.clone(),
        msg,
    };
    let file = File::open(path).map_err(io_err(path))?;
    let mut text = Vec::new();
    file.take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(io_err(path))?;
    if text.len() as u64 > MAX_INDEX_BYTES {
        return Err(bad(format!("larger than {MAX_INDEX_BYTES} bytes")));
    }
    let v: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("missing `weight_map` object".to_string()))?;
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    let mut weights = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry for `{tensor}` is not a string")))?;
        // A shard must be a plain file name inside the model directory.
        let p = Path::new(file);
        let plain = p.components().count() == 1
            && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
        if !plain {
            return Err(bad(format!(
                "shard `{file}` for `{tensor}` is not a plain file name"
            )));
        }
        if seen.insert(file.to_string()) {
            files.push(file.to_string());
            if files.len() > MAX_SHARDS {
                return Err(bad(format!("more than {MAX_SHARDS} shards")));
            }
        }
        weights.push((tensor.clone(), file.to_string()));
    }
    Ok((files, weights))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A file with the given raw header JSON and `data_len` zero bytes.
    fn craft(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data_len, 0);
        v
    }

    const GOOD: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}"#;

    #[test]
    fn parses_crafted() {
        let f = craft(GOOD, 32);
        let mut t = parse_header(&f, "x").unwrap();
        t.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].shape, vec![2, 3]);
        assert_eq!(t[0].offset, 8 + GOOD.len());
        assert_eq!(t[0].len, 24);
        assert_eq!(t[1].dtype, Dtype::BF16);
        assert_eq!(t[1].offset, 8 + GOOD.len() + 24);
    }

    fn err(header: &str, data_len: usize) -> SafeTensorsError {
        parse_header(&craft(header, data_len), "file.st").unwrap_err()
    }

    #[test]
    fn crafted_errors() {
        // Truncated: too short for the length, header longer than the file.
        assert!(matches!(
            parse_header(&[1, 2, 3], "f").unwrap_err(),
            SafeTensorsError::Truncated { .. }
        ));
        let mut f = craft(GOOD, 32);
        f.truncate(20);
        let e = parse_header(&f, "f.st").unwrap_err();
        assert!(matches!(e, SafeTensorsError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("f.st"));
        // Data area too short.
        let e = err(GOOD, 31);
        assert!(
            matches!(e, SafeTensorsError::OffsetOutOfBounds { .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("`b`") && e.to_string().contains("file.st"),
            "{e}"
        );
        // Huge header length.
        let mut f = u64::MAX.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            parse_header(&f, "f").unwrap_err(),
            SafeTensorsError::HeaderTooLarge { .. }
        ));
        // Wrong shape for the byte span.
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[2,4],"data_offsets":[0,24]}}"#,
            24,
        );
        assert!(matches!(e, SafeTensorsError::SizeMismatch { .. }), "{e}");
        // Shape product overflow.
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#,
            0,
        );
        assert!(
            matches!(e, SafeTensorsError::SizeMismatch { expected: None, .. }),
            "{e}"
        );
        // Unknown and unsupported dtypes.
        let e = err(
            r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
            1,
        );
        assert!(matches!(e, SafeTensorsError::UnknownDtype { .. }), "{e}");
        let e = err(
            r#"{"w":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#,
            1,
        );
        assert!(
            matches!(e, SafeTensorsError::UnsupportedDtype { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("`w`"));
        // begin > end.
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#,
            8,
        );
        assert!(
            matches!(e, SafeTensorsError::OffsetOutOfBounds { .. }),
            "{e}"
        );
        // Overlap.
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        );
        assert!(matches!(e, SafeTensorsError::Overlap { .. }), "{e}");
        // Structural problems.
        for h in [
            "[]",
            "{",
            r#"{"a":1}"#,
            r#"{"a":{"shape":[1],"data_offsets":[0,4]}}"#,
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}"#,
            r#"{"__metadata__":{"k":1}}"#,
        ] {
            assert!(
                matches!(err(h, 4), SafeTensorsError::InvalidHeader { .. }),
                "{h}"
            );
        }
    }

    #[test]
    fn missing_and_wrong_shape() {
        let st = SafeTensors::from_bytes(&craft(GOOD, 32), "mem.st").unwrap();
        let e = st.tensor("nope").unwrap_err();
        assert!(matches!(e, SafeTensorsError::MissingTensor { .. }));
        assert!(
            e.to_string().contains("nope") && e.to_string().contains("mem.st"),
            "{e}"
        );
        let e = st.tensor_shaped("a", &[3, 2]).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("[2, 3]") && s.contains("[3, 2]") && s.contains("mem.st"),
            "{s}"
        );
        assert_eq!(st.tensor_shaped("a", &[2, 3]).unwrap().len, 24);
        assert!(st.get("b").is_some());
        assert_eq!(st.bytes(st.tensor("b").unwrap()).len(), 8);
        assert_eq!(st.shard_bytes(7), &[] as &[u8]);
    }

    #[test]
    fn write_roundtrip_and_stream() {
        let dir = std::env::temp_dir().join(format!("tpi-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = (100..108u8).collect();
        let path = dir.join("model.safetensors");
        write(
            &path,
            &[
                ("x.weight", Dtype::F32, &[2, 3], &a),
                ("y\"q", Dtype::F16, &[2, 2], &b),
            ],
        )
        .unwrap();
        let raw = std::fs::read(&path).unwrap();
        let hl = u64::from_le_bytes(raw[..8].try_into().unwrap());
        assert_eq!(hl % 8, 0);
        let st = SafeTensors::open_dir(&dir).unwrap();
        assert_eq!(st.tensors().count(), 2);
        let x = st.tensor_shaped("x.weight", &[2, 3]).unwrap();
        assert_eq!(x.offset % 8, 0);
        assert_eq!(st.bytes(x), &a[..]);
        assert_eq!(st.bytes(st.tensor("y\"q").unwrap()), &b[..]);

        // Streaming in odd chunks; too few / too many bytes are errors.
        let specs = vec![
            ("p".to_string(), Dtype::BF16, vec![3]),
            ("q".to_string(), Dtype::F32, vec![1]),
        ];
        let p2 = dir.join("s.safetensors");
        let mut w = StreamWriter::create(&p2, &specs).unwrap();
        w.write_tensor_data(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(w.current_tensor(), Some("p"));
        w.write_tensor_data(&[6, 7, 8, 9, 10]).unwrap();
        assert!(w.write_tensor_data(&[0]).is_err());
        w.finish().unwrap();
        let st = SafeTensors::from_bytes(&std::fs::read(&p2).unwrap(), "s").unwrap();
        assert_eq!(st.bytes(st.tensor("q").unwrap()), &[7, 8, 9, 10]);
        let mut w = StreamWriter::create(&p2, &specs).unwrap();
        w.write_tensor_data(&[1]).unwrap();
        let e = w.finish().unwrap_err();
        assert!(e.to_string().contains("`p`"), "{e}");

        // Sharded directory with an index.
        let sd = dir.join("sharded");
        std::fs::create_dir_all(&sd).unwrap();
        write(
            &sd.join("m-1.safetensors"),
            &[("a", Dtype::F32, &[1], &[0; 4])],
        )
        .unwrap();
        write(
            &sd.join("m-2.safetensors"),
            &[("b", Dtype::F32, &[2], &[1; 8])],
        )
        .unwrap();
        std::fs::write(
            sd.join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors"}}"#,
        )
        .unwrap();
        let st = SafeTensors::open_dir(&sd).unwrap();
        let b = st.tensor("b").unwrap();
        assert!(st.shard_name(b.shard).ends_with("m-2.safetensors"));
        assert_eq!(st.bytes(b), &[1; 8]);
        std::fs::write(
            sd.join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"../m-1.safetensors"}}"#,
        )
        .unwrap();
        assert!(matches!(
            SafeTensors::open_dir(&sd).unwrap_err(),
            SafeTensorsError::Index { .. }
        ));
        std::fs::write(
            sd.join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"m-2.safetensors"}}"#,
        )
        .unwrap();
        assert!(SafeTensors::open_dir(&sd).is_err());
        assert!(matches!(
            SafeTensors::open_dir(&dir.join("none")).unwrap_err(),
            SafeTensorsError::NoModelFile { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fixtures() {
        for (name, count, dtype) in [
            ("stories260K", 47, Dtype::F32),
            ("llama-mha-f32", 39, Dtype::F32),
            ("llama-gqa-bf16", 29, Dtype::BF16),
        ] {
            let st = SafeTensors::open_dir(&fixture(name)).unwrap();
            assert_eq!(st.tensors().count(), count, "{name}");
            assert!(st.tensors().all(|t| t.dtype == dtype), "{name}");
            let emb = st.tensor("model.embed_tokens.weight").unwrap();
            assert_eq!(
                emb.shape[1],
                if name == "llama-gqa-bf16" { 128 } else { 64 }
            );
            assert_eq!(st.bytes(emb).len(), emb.len);
        }
        let st = SafeTensors::open_dir(&fixture("llama-gqa-bf16")).unwrap();
        st.tensor_shaped("model.layers.0.self_attn.k_proj.weight", &[32, 128])
            .unwrap();
        assert!(st.get("lm_head.weight").is_none());
        let st = SafeTensors::open_dir(&fixture("llama-mha-f32")).unwrap();
        st.tensor_shaped("lm_head.weight", &[512, 64]).unwrap();
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_header(&bytes, "p");
            }

            #[test]
            fn never_panics_on_random_header(h in ".{0,200}", data in 0usize..64) {
                let _ = parse_header(&craft(&h, data), "p");
            }

            #[test]
            fn never_panics_on_mutated_header(
                muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                cut in any::<usize>(),
            ) {
                let mut f = craft(GOOD, 32);
                for (pos, b) in muts {
                    let i = pos % f.len();
                    f[i] = b;
                }
                let _ = parse_header(&f, "p");
                let n = cut % (f.len() + 1);
                let _ = parse_header(&f[..n], "p");
                if let Ok(st) = SafeTensors::from_bytes(&f, "p") {
                    for t in st.tensors() {
                        prop_assert_eq!(st.bytes(t).len(), t.len);
                    }
                }
            }
        }
    }
}
