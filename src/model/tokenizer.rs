//! HuggingFace `tokenizer.json` through the `tokenizers` crate, plus an
//! incremental (streaming) decoder for generated tokens.

use std::fmt;
use std::path::Path;

/// Largest accepted tokenizer.json (real ones are < 20 MB).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;
/// How many context tokens the stream decoder looks back at.
const STREAM_LOOKBACK: usize = 6;

/// Errors from loading or using a tokenizer; each names the tokenizer file.
#[derive(Debug)]
pub enum TokenizerError {
    Io {
        path: String,
        source: std::io::Error,
    },
    TooLarge {
        path: String,
        len: u64,
        max: u64,
    },
    /// tokenizer.json could not be parsed.
    Parse {
        origin: String,
        msg: String,
    },
    Encode {
        origin: String,
        msg: String,
    },
    Decode {
        origin: String,
        msg: String,
    },
    /// GGUF tokenizer metadata that cannot be used (see `gguf_vocab`).
    Vocab {
        origin: String,
        source: super::vocab_error::VocabError,
    },
    /// A token id outside the vocabulary.
    UnknownId {
        origin: String,
        id: u32,
        vocab_size: usize,
    },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Io { path, source } => write!(f, "{path}: cannot read: {source}"),
            TokenizerError::TooLarge { path, len, max } => write!(
                f,
                "{path}: {len} bytes, more than the {max} allowed for a tokenizer"
            ),
            TokenizerError::Parse { origin, msg } => {
                write!(f, "{origin}: invalid tokenizer: {msg}")
            }
            TokenizerError::Encode { origin, msg } => write!(f, "{origin}: encode failed: {msg}"),
            TokenizerError::Decode { origin, msg } => write!(f, "{origin}: decode failed: {msg}"),
            TokenizerError::Vocab { origin, source } => {
                write!(f, "{origin}: invalid GGUF vocabulary: {source}")
            }
            TokenizerError::UnknownId {
                origin,
                id,
                vocab_size,
            } => write!(
                f,
                "{origin}: token id {id} is outside the vocabulary of {vocab_size}"
            ),
        }
    }
}

impl std::error::Error for TokenizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenizerError::Io { source, .. } => Some(source),
            TokenizerError::Vocab { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// GGUF "llama" vocabs encode through llama.cpp's SentencePiece
    /// algorithm (`gguf_vocab::Spm`); `inner` still decodes.
    spm: Option<super::spm::Spm>,
    origin: String,
    vocab_size: usize,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        use std::io::Read;
        let name = path.display().to_string();
        let io = |source| TokenizerError::Io {
            path: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_TOKENIZER_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_TOKENIZER_BYTES {
            return Err(TokenizerError::TooLarge {
                path: name,
                len: bytes.len() as u64,
                max: MAX_TOKENIZER_BYTES,
            });
        }
        Self::from_bytes(&bytes, &name)
    }

    /// Parses tokenizer.json bytes; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, TokenizerError> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Parse {
                origin: origin.to_string(),
                msg: e.to_string(),
            })?;
        Ok(Self::from_parts(inner, None, origin))
    }

    /// A built `tokenizers` tokenizer, with the encoder that replaces its
    /// encode if any (the GGUF constructor in `gguf_vocab`).
    pub(super) fn from_parts(
        inner: tokenizers::Tokenizer,
        spm: Option<super::spm::Spm>,
        origin: &str,
    ) -> Self {
        let vocab_size = inner.get_vocab_size(true);
        Tokenizer {
            inner,
            spm,
            origin: origin.to_string(),
            vocab_size,
        }
    }

    /// Token ids for `text`, with special tokens (BOS) added exactly as the
    /// tokenizer's post-processor does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, true)
    }

    /// Token ids for a rendered chat prompt: the special tokens the
    /// template wrote (`<s>`, `<|im_start|>`) are read from the text and
    /// none is added, as transformers' `apply_chat_template(tokenize=True)`
    /// encodes with `add_special_tokens=False` (no doubled BOS).
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        if let Some(spm) = &self.spm {
            return spm
                .encode(text, add_special)
                .map_err(|msg| TokenizerError::Encode {
                    origin: self.origin.clone(),
                    msg,
                });
        }
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode {
                origin: self.origin.clone(),
                msg: e.to_string(),
            })
    }

    /// Text for `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.check_ids(ids)?;
        self.decode_unchecked(ids)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), TokenizerError> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(&id) => Err(TokenizerError::UnknownId {
                origin: self.origin.clone(),
                id,
                vocab_size: self.vocab_size,
            }),
            None => Ok(()),
        }
    }

    fn decode_unchecked(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Decode {
                origin: self.origin.clone(),
                msg: e.to_string(),
            })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of a token string (e.g. `"</s>"`), if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id (e.g. `"</s>"`), if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer file name (or origin given to `from_bytes`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A streaming decoder for tokens generated after `context_ids` (the
    /// prompt). The context makes the first generated token keep its
    /// leading space (Metaspace strips one at the start of a decode).
    pub fn stream(&self, context_ids: &[u32]) -> StreamDecoder<'_> {
        let start = context_ids.len().saturating_sub(STREAM_LOOKBACK);
        let ids = context_ids[start..].to_vec();
        StreamDecoder {
            tok: self,
            prefix_offset: 0,
            read_offset: ids.len(),
            ids,
            text: String::new(),
        }
    }
}

/// Incremental decoder (the prefix/read offset scheme of HF
/// text-generation-inference): text is emitted once it no longer ends in
/// U+FFFD, so multi-byte characters split across tokens come out whole.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    /// Window of ids: `ids[..prefix_offset]` is no longer needed.
    ids: Vec<u32>,
    /// Start of the decode window (context for the leading space etc.).
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
    text: String,
}

impl StreamDecoder<'_> {
    /// Adds one generated token; returns the newly completed text (empty
    /// while a multi-byte character is still incomplete).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.tok.check_ids(&[id])?;
        self.ids.push(id);
        self.advance(false)
    }

    /// Emits whatever is still held back (e.g. a trailing incomplete or
    /// invalid UTF-8 sequence, as U+FFFD) at the end of generation.
    pub fn flush(&mut self) -> Result<String, TokenizerError> {
        self.advance(true)
    }

    /// Everything emitted so far (the continuation).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn advance(&mut self, force: bool) -> Result<String, TokenizerError> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let window = &self.ids[self.prefix_offset..];
        let prefix_text = self
            .tok
            .decode_unchecked(&self.ids[self.prefix_offset..self.read_offset])?;
        let new_text = self.tok.decode_unchecked(window)?;
        let complete = !new_text.ends_with('\u{FFFD}');
        if !(force || (complete && new_text.len() > prefix_text.len())) {
            return Ok(String::new());
        }
        let fresh = match new_text.strip_prefix(prefix_text.as_str()) {
            Some(s) => s.to_string(),
            None => {
                // The decoders changed earlier text (should not happen with
                // the supported decoders); emit from the first difference.
                let common = new_text
                    .char_indices()
                    .zip(prefix_text.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(prefix_text.len().min(new_text.len()), |((i, _), _)| i);
                new_text.get(common..).unwrap_or("").to_string()
            }
        };
        // The emitted tokens become the next window's prefix; ids before
        // them are no longer needed.
        let old_read = self.read_offset;
        self.ids.drain(..old_read);
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
        self.text.push_str(&fresh);
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::PathBuf;

    const FIXTURES: [&str; 3] = ["stories260K", "llama-mha-f32", "llama-gqa-bf16"];

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    fn reference(name: &str) -> Value {
        let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn stream_all(tok: &Tokenizer, ctx: &[u32], gen: &[u32]) -> (Vec<String>, String) {
        let mut s = tok.stream(ctx);
        let mut pieces = Vec::new();
        for &id in gen {
            pieces.push(s.push(id).unwrap());
        }
        pieces.push(s.flush().unwrap());
        assert_eq!(pieces.concat(), s.text());
        (pieces, s.text().to_string())
    }

    #[test]
    fn encode_matches_reference() {
        for name in FIXTURES {
            let tok = Tokenizer::from_file(&fixture(name).join("tokenizer.json")).unwrap();
            let r = reference(name);
            for p in r["prompts"].as_array().unwrap() {
                let text = p["text"].as_str().unwrap();
                assert_eq!(tok.encode(text).unwrap(), ids(&p["ids"]), "{name}: {text}");
            }
        }
    }

    #[test]
    fn stream_matches_full_text() {
        for name in FIXTURES {
            let tok = Tokenizer::from_file(&fixture(name).join("tokenizer.json")).unwrap();
            let r = reference(name);
            for p in r["prompts"].as_array().unwrap() {
                let prompt = ids(&p["ids"]);
                let gen = ids(&p["greedy"]["ids"]);
                let full = p["greedy"]["full_text"].as_str().unwrap();
                // The library itself reproduces the oracle's decodes.
                let mut all = prompt.clone();
                all.extend_from_slice(&gen);
                assert_eq!(tok.decode(&all).unwrap(), full, "{name}");
                assert_eq!(
                    tok.decode(&gen).unwrap(),
                    p["greedy"]["text"].as_str().unwrap(),
                    "{name}"
                );
                let (_, streamed) = stream_all(&tok, &prompt, &gen);
                let joined = tok.decode(&prompt).unwrap() + &streamed;
                assert_eq!(joined, full, "{name}");
                // Before flush(), what was emitted is already final text:
                // a prefix of the full decode (random models may end in an
                // incomplete UTF-8 sequence that only flush() emits as U+FFFD).
                let mut s = tok.stream(&prompt);
                for &id in &gen {
                    s.push(id).unwrap();
                }
                let early = tok.decode(&prompt).unwrap() + s.text();
                assert!(full.starts_with(&early), "{name}");
            }
        }
    }

    #[test]
    fn stream_byte_fallback_utf8() {
        let tok = Tokenizer::from_file(&fixture("stories260K").join("tokenizer.json")).unwrap();
        let text = "Lily said é and 日本 and 🙂 too.";
        let ids = tok.encode(text).unwrap();
        // The multi-byte characters really are byte-fallback tokens.
        // ("é" is a vocab piece in this tokenizer; 日本 and 🙂 are not.)
        assert!(ids.contains(&tok.token_to_id("<0xF0>").unwrap()));
        assert!(ids.contains(&tok.token_to_id("<0xE6>").unwrap()));
        assert_eq!(ids[0], 1);
        let (pieces, streamed) = stream_all(&tok, &ids[..1], &ids[1..]);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // Some token completed nothing (inside a multi-byte sequence).
        assert!(pieces[..pieces.len() - 1].iter().any(String::is_empty));
        // With BOS as context the leading Metaspace space is kept.
        assert_eq!(streamed, format!(" {text}"));
        assert_eq!(tok.decode(&ids).unwrap(), format!("<s> {text}"));
    }

    #[test]
    fn errors() {
        let tok = Tokenizer::from_file(&fixture("stories260K").join("tokenizer.json")).unwrap();
        assert_eq!(tok.vocab_size(), 512);
        let e = tok.decode(&[1, 512]).unwrap_err();
        assert!(
            matches!(e, TokenizerError::UnknownId { id: 512, .. }),
            "{e}"
        );
        assert!(tok.stream(&[]).push(100_000).is_err());

        let e = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tokenizer.json"), "{e}");
        for bad in [
            &b"{not json"[..],
            b"{}",
            b"[1]",
            b"{\"model\":{\"type\":\"BPE\",\"vocab\":5}}",
        ] {
            let e = Tokenizer::from_bytes(bad, "dir/tokenizer.json").unwrap_err();
            assert!(matches!(e, TokenizerError::Parse { .. }));
            assert!(e.to_string().contains("dir/tokenizer.json"), "{e}");
        }
    }
}
