//! What can stop a generation, naming the step, layer or position. The
//! layers below report their own errors, kept as the cause: the weights
//! (a matrix, a window, a slice block), the collective (a peer, a frame),
//! the tokenizer, and the caller's text sink (a closed stdout).

use std::fmt;

/// A cause from another area, kept whole for `source()`.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum EngineError {
    /// A prompt with no token.
    EmptyPrompt,
    /// A prompt token outside the model's vocabulary.
    TokenOutOfVocab { id: u32, vocab: usize },
    /// A prompt plus the tokens to generate run past the model's context.
    Context {
        prompt: usize,
        length: usize,
        limit: usize,
    },
    /// A forward at a position the model has no room for.
    BeyondContext { pos: usize, max: usize },
    /// A forward of no tokens.
    NoTokens,
    /// NaN or infinity in the activations (`stage`: a layer's output, the
    /// logits) at a prompt or generated position.
    NonFinite { stage: String, pos: usize },
    /// A buffer sized by the run (the KV cache) that cannot be had.
    Memory { what: String, bytes: u64 },
    /// lm_head rows a weights source handed out beyond this rank's vocab.
    LmHeadRows {
        part: usize,
        rows: std::ops::Range<usize>,
        vocab: usize,
    },
    /// The weights failed (a matrix, the window, a slice block).
    Weights(Cause),
    /// The exchange with other ranks failed.
    Comm(Cause),
    /// Decoding generated ids to text failed.
    Tokenizer(crate::model::tokenizer::TokenizerError),
    /// The caller's text sink failed (stdout closed or full).
    Output(Cause),
}

impl EngineError {
    /// Whether the request itself is impossible (the caller's to fix).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EngineError::EmptyPrompt
                | EngineError::TokenOutOfVocab { .. }
                | EngineError::Context { .. }
        )
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::EmptyPrompt => write!(f, "the prompt has no tokens"),
            EngineError::TokenOutOfVocab { id, vocab } => write!(
                f,
                "prompt token id {id} is outside the vocabulary of {vocab}"
            ),
            EngineError::Context {
                prompt,
                length,
                limit,
            } => write!(
                f,
                "the prompt ({prompt} tokens) plus {length} tokens to generate is {} positions, beyond the model's context of {limit} (max_position_embeddings); generate at most {} tokens",
                prompt.saturating_add(*length),
                limit.saturating_sub(*prompt)
            ),
            EngineError::BeyondContext { pos, max } => write!(
                f,
                "position {pos} beyond the model's context of {max} tokens"
            ),
            EngineError::NoTokens => write!(f, "forward of no tokens"),
            EngineError::NonFinite { stage, pos } => write!(
                f,
                "non-finite values (NaN or infinity) in {stage} at position {pos}: the weights hold NaN/inf or the activations overflowed"
            ),
            EngineError::Memory { what, bytes } => write!(
                f,
                "{what} needs {} and cannot be allocated",
                crate::progress::human_bytes(*bytes as f64)
            ),
            EngineError::LmHeadRows { part, rows, vocab } => write!(
                f,
                "lm_head part {part}: rows {}..{} beyond this rank's {vocab} vocab rows",
                rows.start, rows.end
            ),
            EngineError::Weights(e) => write!(f, "weights: {e}"),
            EngineError::Comm(e) => write!(f, "{e}"),
            EngineError::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            EngineError::Output(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Weights(e) | EngineError::Comm(e) | EngineError::Output(e) => {
                Some(e.as_ref())
            }
            EngineError::Tokenizer(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::model::tokenizer::TokenizerError> for EngineError {
    fn from(e: crate::model::tokenizer::TokenizerError) -> Self {
        EngineError::Tokenizer(e)
    }
}
