//! What can be wrong with a tokenizer vocabulary read from a GGUF file
//! ([`VocabError`]): its own file so that the tokenizer (which carries it
//! as a cause) and the GGUF vocabulary builder both name it without
//! depending on each other.

use std::fmt;

/// The pre types tpi knows (those of [`pre_regexes`]), for the error
/// message. Absent means "default", as in llama.cpp; "llama" vocabs have
/// no pre-tokenizer and ignore the key.
pub(super) const KNOWN_PRES: [&str; 8] = [
    "default",
    "gpt-2",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "deepseek-llm",
];

/// What is wrong with a GGUF vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum VocabError {
    UnknownModel(String),
    /// A "gpt2" vocab whose `tokenizer.ggml.pre` tpi has no regexes for.
    UnknownPre(String),
    NoTokens,
    TooManyTokens {
        n: usize,
        max: usize,
    },
    TokenTooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    DuplicateToken {
        index: usize,
        first: usize,
    },
    /// `scores` or `token_types` not one per token.
    LengthMismatch {
        what: &'static str,
        len: usize,
        n_tokens: usize,
    },
    /// A key the model needs is absent ("llama": scores, "gpt2": merges).
    Missing(&'static str),
    BadTokenType {
        index: usize,
        value: i32,
    },
    NanScore {
        index: usize,
    },
    TooManyMerges {
        n: usize,
        max: usize,
    },
    /// Merge `index` is not `"a b"` with `a`, `b` and `ab` all tokens.
    BadMerge {
        index: usize,
        merge: String,
        why: &'static str,
    },
    /// A special id (`what` = "bos", ...) outside the vocabulary.
    SpecialOutOfRange {
        what: &'static str,
        id: u32,
        n_tokens: usize,
    },
    /// `add_bos` / `add_eos` set but no such token.
    NoSpecial {
        what: &'static str,
    },
}

impl fmt::Display for VocabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VocabError::UnknownModel(m) => write!(
                f,
                "tokenizer.ggml.model \"{m}\" is not supported (only \"llama\" and \"gpt2\")"
            ),
            VocabError::UnknownPre(p) => write!(
                f,
                "tokenizer.ggml.pre \"{p}\" is not supported (known: {})",
                KNOWN_PRES.join(", ")
            ),
            VocabError::NoTokens => write!(f, "tokenizer.ggml.tokens is empty"),
            VocabError::TooManyTokens { n, max } => {
                write!(f, "{n} tokens, more than the {max} allowed")
            }
            VocabError::TokenTooLong { index, len, max } => {
                write!(
                    f,
                    "token {index} is {len} bytes, more than the {max} allowed"
                )
            }
            VocabError::DuplicateToken { index, first } => {
                write!(f, "token {index} has the same text as token {first}")
            }
            VocabError::LengthMismatch {
                what,
                len,
                n_tokens,
            } => write!(
                f,
                "tokenizer.ggml.{what} has {len} entries for {n_tokens} tokens"
            ),
            VocabError::Missing(key) => write!(f, "tokenizer.ggml.{key} is missing"),
            VocabError::BadTokenType { index, value } => {
                write!(f, "token {index} has unknown token type {value}")
            }
            VocabError::NanScore { index } => write!(f, "token {index} has score NaN"),
            VocabError::TooManyMerges { n, max } => {
                write!(f, "{n} merges, more than the {max} allowed")
            }
            VocabError::BadMerge { index, merge, why } => {
                write!(f, "merge {index} {merge:?}: {why}")
            }
            VocabError::SpecialOutOfRange { what, id, n_tokens } => write!(
                f,
                "{what} token id {id} is outside the vocabulary of {n_tokens}"
            ),
            VocabError::NoSpecial { what } => {
                write!(f, "add_{what}_token is set but there is no {what} token")
            }
        }
    }
}

impl std::error::Error for VocabError {}
