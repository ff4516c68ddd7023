//! The `tokenizer.ggml.*` metadata of a GGUF file as a [`GgufVocab`],
//! the plain values [`crate::model::gguf_vocab`] builds a tokenizer from.
//! A key of the wrong GGUF type is the reader's error naming the file and
//! the key; the values themselves are checked by the tokenizer builder.

use super::*;
use crate::model::gguf::Array;
use crate::model::gguf_vocab::GgufVocab;

const PREFIX: &str = "tokenizer.ggml.";

/// The vocabulary of `gguf`, `None` when it has no `tokenizer.ggml.model`
/// (ids-only use, like an HF directory without tokenizer.json).
pub fn vocab(gguf: &Gguf) -> Result<Option<GgufVocab>, GgufModelError> {
    let m = gguf.metadata();
    let key = |k: &str| format!("{PREFIX}{k}");
    let Some(model) = m.opt_str(&key("model"))? else {
        return Ok(None);
    };
    let strings = |k: &str| -> Result<Option<Vec<String>>, GgufError> {
        Ok(m.opt_str_array(&key(k))?
            .map(|a| a.iter().map(str::to_string).collect()))
    };
    // llama.cpp reads scores as f32, and i32 arrays converted.
    let scores = match m.opt_array(&key("scores"))? {
        None => None,
        Some(Array::I32(v)) => Some(v.iter().map(|&s| s as f32).collect()),
        Some(_) => Some(m.get_f32_array(&key("scores"))?.to_vec()),
    };
    Ok(Some(GgufVocab {
        model: model.to_string(),
        pre: m.opt_str(&key("pre"))?.map(str::to_string),
        tokens: strings("tokens")?.unwrap_or_default(),
        scores,
        token_types: m.opt_i32_array(&key("token_type"))?.map(<[i32]>::to_vec),
        merges: strings("merges")?,
        bos: m.opt_u32(&key("bos_token_id"))?,
        eos: m.opt_u32(&key("eos_token_id"))?,
        unk: m.opt_u32(&key("unknown_token_id"))?,
        pad: m.opt_u32(&key("padding_token_id"))?,
        add_bos: m.opt_bool(&key("add_bos_token"))?,
        add_eos: m.opt_bool(&key("add_eos_token"))?,
        add_space_prefix: m.opt_bool(&key("add_space_prefix"))?,
    }))
}
