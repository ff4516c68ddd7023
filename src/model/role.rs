//! What a tensor is in a Llama-family model, whichever file it comes from
//! (safetensors names in `names`, GGUF names in `gguf_model`); the slice
//! manifest stores it as a code (`split::manifest`).

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    AttnNorm,
    FfnNorm,
    QBias,
    KBias,
    VBias,
    FinalNorm,
    Embedding,
    LmHead,
}
