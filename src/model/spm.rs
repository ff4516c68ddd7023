//! llama.cpp's SentencePiece-BPE encoder for `tokenizer.ggml.model =
//! "llama"` vocabularies (a port of `llm_tokenizer_spm_session` and
//! `tokenizer_st_partition` in `src/llama-vocab.cpp`): merge the adjacent
//! pair whose concatenation is the token of highest score, ties to the
//! leftmost, after partitioning the text on special tokens. Built by
//! [`super::gguf_vocab`] from a checked vocabulary; see there for why it
//! is not the `tokenizers` crate's BPE.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// A text fragment during special-token partition.
#[derive(Debug, Clone, Copy)]
enum Fragment {
    /// `text[start..end]`, not yet tokenized.
    Text(usize, usize),
    Token(u32),
}

/// What [`Spm::new`] builds from: a checked vocabulary.
pub(super) struct SpmVocab<'a> {
    /// Token text to id.
    pub ids: HashMap<String, u32>,
    /// Tokens matched in text before anything else (control, unknown,
    /// user-defined), any order.
    pub specials: Vec<(String, u32)>,
    /// Per token id.
    pub scores: &'a [f32],
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

/// llama.cpp's SentencePiece-BPE encoder (`llm_tokenizer_spm_session`),
/// with its special-token partition and BOS / space-prefix rules.
pub(crate) struct Spm {
    ids: HashMap<String, u32>,
    /// Per token id.
    scores: Vec<f32>,
    /// Tokens matched in text, longest first (`cache_special_tokens`).
    specials: Vec<(String, u32)>,
    /// `<0xNN>` (else the one-byte text) per byte.
    byte_ids: Vec<Option<u32>>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

/// A candidate merge of symbols `left` and `right` (`llm_bigram_spm`).
#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Bytes of the merged text; a mismatch marks the bigram stale.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The max-heap pops the highest score, ties the leftmost
    /// (llama.cpp's `comparator`). Scores are not NaN (checked on load)
    /// and -0.0 was folded into 0.0, so `total_cmp` is C++'s `<`.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// A symbol (`llm_symbol`): `text[start..start + n]`, linked to its
/// neighbours; `n == 0` once merged into the left neighbour.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    n: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub(super) fn new(v: SpmVocab) -> Spm {
        let mut specials = v.specials;
        // Longest first; equal lengths by id (llama.cpp's sort is not
        // stable, so its order there is unspecified).
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let byte_ids = (0..=255u8)
            .map(|b| {
                v.ids
                    .get(&format!("<0x{b:02X}>"))
                    .or_else(|| std::str::from_utf8(&[b]).ok().and_then(|s| v.ids.get(s)))
                    .copied()
            })
            .collect();
        Spm {
            scores: v
                .scores
                .iter()
                .map(|&s| if s == 0.0 { 0.0 } else { s })
                .collect(),
            ids: v.ids,
            specials,
            byte_ids,
            bos: v.bos,
            eos: v.eos,
            add_bos: v.add_bos,
            add_eos: v.add_eos,
            add_space_prefix: v.add_space_prefix,
        }
    }

    /// Token ids for `text` as llama.cpp's `tokenize(text, add_special,
    /// true)`: special tokens in the text always parsed, BOS/EOS added
    /// only with `add_special`.
    pub(super) fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        if let (true, true, Some(bos)) = (add_special, self.add_bos, self.bos) {
            out.push(bos);
        }
        let mut prev_special = true;
        for frag in self.partition(text) {
            match frag {
                Fragment::Text(start, end) => {
                    let mut piece = String::with_capacity(end - start + 3);
                    if self.add_space_prefix && prev_special {
                        piece.push(' ');
                    }
                    piece.push_str(&text[start..end]);
                    let piece = piece.replace(' ', "\u{2581}");
                    self.tokenize(&piece, &mut out)?;
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        if let (true, true, Some(eos)) = (add_special, self.add_eos, self.eos) {
            out.push(eos);
        }
        Ok(out)
    }

    /// `tokenizer_st_partition`: for each special token, longest first,
    /// every text fragment is split around each of its occurrences.
    fn partition(&self, text: &str) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        for (special, id) in &self.specials {
            let mut next = Vec::with_capacity(frags.len());
            for frag in frags {
                let Fragment::Text(mut start, end) = frag else {
                    next.push(frag);
                    continue;
                };
                while let Some(at) = text[start..end].find(special.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(start, start + at));
                    }
                    next.push(Fragment::Token(*id));
                    start += at + special.len();
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            frags = next;
        }
        frags
    }

    /// `llm_tokenizer_spm_session::tokenize` on one escaped text piece:
    /// symbols start as the UTF-8 characters; the queue holds every
    /// adjacent pair whose text is a token; popping merges the best one
    /// (stale pairs, whose symbols changed since, are skipped) and queues
    /// the new symbol's pairs with its neighbours.
    ///
    /// A final symbol is a token (merges only make tokens) or one
    /// character without a token, which falls back to its bytes. (llama.cpp's
    /// `resegment` also looks a final symbol up in `rev_merge`, whose keys
    /// are merged texts of two or more characters, so never one character.)
    fn tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let mut symbols: Vec<Symbol> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            let n = c.len_utf8();
            symbols.push(Symbol {
                start,
                n,
                prev: i.checked_sub(1),
                next: (start + n < text.len()).then_some(i + 1),
            });
        }
        let mut queue = BinaryHeap::new();
        let bigram = |left: usize, right: usize, symbols: &[Symbol]| {
            let (l, r) = (symbols[left], symbols[right]);
            let merged = &text[l.start..l.start + l.n + r.n];
            self.ids.get(merged).map(|&id| Bigram {
                left,
                right,
                score: self.scores[id as usize],
                size: merged.len(),
            })
        };
        for i in 1..symbols.len() {
            queue.extend(bigram(i - 1, i, &symbols));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.n == 0 || r.n == 0 || l.n + r.n != b.size {
                continue;
            }
            symbols[b.left].n += r.n;
            symbols[b.right].n = 0;
            symbols[b.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(b.left);
            }
            if let Some(prev) = symbols[b.left].prev {
                queue.extend(bigram(prev, b.left, &symbols));
            }
            if let Some(next) = symbols[b.left].next {
                queue.extend(bigram(b.left, next, &symbols));
            }
        }
        let mut at = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.n];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        match self.byte_ids[b as usize] {
                            Some(id) => out.push(id),
                            None => return Err(format!("byte 0x{b:02X} has no token")),
                        }
                    }
                }
            }
            at = s.next;
        }
        Ok(())
    }
}
