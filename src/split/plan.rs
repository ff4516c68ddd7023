//! Split plan: which slice of every layer each rank holds. A pure function of
//! the model shape, the world size and optional per-rank weights.
//!
//! Rules (spec; the checks in [`split`] cite these as `plan spec §n`):
//! 1. `world_size` is in `1..=n_heads`; every shape field is non-zero and
//!    `n_heads % n_kv_heads == 0` (group = `n_heads / n_kv_heads`).
//! 2. `weights`, when given, has exactly `world_size` entries, each `>= 1`;
//!    default is all 1.
//! 3. Attention: query heads are split into contiguous ranges in rank order,
//!    proportional to the weights. If `world_size <= n_kv_heads` the KV heads
//!    are split (whole GQA groups per rank, no KV head replicated) and a
//!    rank's query heads are its groups' heads. Otherwise query heads are
//!    split (each rank `>= 1`) and KV heads are replicated as needed. A rank's
//!    `kv_heads` is always `[heads.start / group, ceil(heads.end / group))`.
//! 4. MLP intermediate columns (`hidden`) and lm_head rows (`vocab`) are split
//!    into contiguous non-empty ranges proportional to the weights, with
//!    boundaries on multiples of 32 when `len / 32 >= world_size`, else of 8
//!    when `len / 8 >= world_size`, else of 1 (`len >= world_size` required).
//!    The last rank absorbs the remainder `len % granule`.
//! 5. Proportional rounding: cumulative boundaries
//!    `c_i = round(units * (w_0 + .. + w_{i-1}) / W)`, clamped so every range
//!    holds at least one unit. When `units >= W` no clamping happens and each
//!    range is within one unit of its exact quota; when `W` divides `units`
//!    it is exact.
//! 6. With a block type (`--quantize`), heads are split in units whose
//!    o_proj columns (`unit * head_dim`) are whole 32-blocks, when there are
//!    at least `world_size` such units (head_dim 64 or 128: every unit is
//!    one head or group, so nothing changes); otherwise as in rule 3, and a
//!    rank's o_proj columns that are not whole blocks are stored as F16.
//!    A K-quant (Q4_K, Q6_K: 256-weight super-blocks) first tries units of
//!    whole 256-blocks the same way (head_dim 64: 4 heads), and its MLP
//!    columns take granule 256 when `hidden_dim / 256 >= world_size`
//!    (rule 4 otherwise); columns that are not whole super-blocks fall
//!    back to Q8_0 (or F16), see `split::types`.

use std::fmt;
use std::ops::Range;

use crate::codec::checksum::checksum64;
use crate::model::dtype::{Quant, BLOCK};

/// Model dimensions the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Residual width.
    pub dim: usize,
    /// MLP intermediate size.
    pub hidden_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub n_layers: usize,
}

impl Shape {
    /// The plan's view of a resolved model config.
    pub fn of(cfg: &crate::model::config::Config) -> Shape {
        Shape {
            dim: cfg.dim,
            hidden_dim: cfg.hidden_dim,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            vocab_size: cfg.vocab_size,
            n_layers: cfg.n_layers,
        }
    }
}

/// One rank's slice of every layer: what the rank's weights hold (a slice
/// file's manifest carries it; `weights::Dims` is resolved from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankSlice {
    pub rank: usize,
    /// Query heads `[start, end)`.
    pub heads: Range<usize>,
    /// KV heads used by `heads`: exactly those, `[start, end)`.
    pub kv_heads: Range<usize>,
    /// MLP intermediate columns (rows of gate/up, columns of down).
    pub hidden: Range<usize>,
    /// lm_head rows (vocab ids) this rank computes.
    pub vocab: Range<usize>,
}

impl RankSlice {
    /// The whole model: the single rank of a 1-rank plan (what
    /// `split(&Shape::of(cfg), 1, None)` gives rank 0).
    pub fn whole(cfg: &crate::model::config::Config) -> RankSlice {
        RankSlice {
            rank: 0,
            heads: 0..cfg.n_heads,
            kv_heads: 0..cfg.n_kv_heads,
            hidden: 0..cfg.hidden_dim,
            vocab: 0..cfg.vocab_size,
        }
    }
}

/// The split of a model over `world_size` ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub shape: Shape,
    pub world_size: usize,
    pub weights: Vec<u32>,
    pub ranks: Vec<RankSlice>,
    /// `--quantize`: the block type the slices store layer matrices in
    /// (`None`: their stored dtype). Part of [`Plan::hash`], so the f16 and
    /// the q4_0 slices of one model never share a cache entry, and a worker
    /// with its own model claims the same plan only with the same flag.
    pub quant: Option<Quant>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// A shape field is zero (spec §1).
    ZeroDimension { field: &'static str },
    /// `n_heads` is not a multiple of `n_kv_heads` (spec §1).
    HeadsNotMultipleOfKvHeads { n_heads: usize, n_kv_heads: usize },
    /// `world_size` outside `1..=n_heads` (spec §1).
    WorldSize { world_size: usize, n_heads: usize },
    /// `weights.len() != world_size` (spec §2).
    WeightsLen { got: usize, world_size: usize },
    /// A weight is 0 (spec §2).
    ZeroWeight { rank: usize },
    /// Fewer units than ranks, so some range would be empty (spec §4).
    TooFewUnits {
        what: &'static str,
        units: usize,
        world_size: usize,
    },
    /// Rank index outside `0..world_size`.
    NoSuchRank { rank: usize, world_size: usize },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::ZeroDimension { field } => write!(f, "plan: shape field {field} is 0"),
            PlanError::HeadsNotMultipleOfKvHeads {
                n_heads,
                n_kv_heads,
            } => write!(
                f,
                "plan: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}"
            ),
            PlanError::WorldSize {
                world_size,
                n_heads,
            } => write!(
                f,
                "plan: world size {world_size} outside 1..={n_heads} (n_heads)"
            ),
            PlanError::WeightsLen { got, world_size } => {
                write!(f, "plan: {got} weights given for world size {world_size}")
            }
            PlanError::ZeroWeight { rank } => {
                write!(f, "plan: weight of rank {rank} is 0 (must be >= 1)")
            }
            PlanError::TooFewUnits {
                what,
                units,
                world_size,
            } => write!(
                f,
                "plan: {what} = {units} cannot give each of {world_size} ranks a non-empty range"
            ),
            PlanError::NoSuchRank { rank, world_size } => {
                write!(f, "plan: rank {rank} outside 0..{world_size}")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// Boundaries `0 = b_0 < b_1 < .. < b_n = len` splitting `0..len` into
/// `weights.len()` contiguous non-empty ranges proportional to `weights`,
/// every inner boundary a multiple of `g` (spec §4, §5):
/// `b_i = g * round(len * (w_0 + .. + w_{i-1}) / (W * g))`, clamped so each
/// range is non-empty. Precondition (checked by callers): `len / g >= n >= 1`,
/// weights `>= 1`, `g >= 1`.
fn proportional_bounds(len: usize, g: usize, weights: &[u32]) -> Vec<usize> {
    let n = weights.len();
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    // Largest inner boundary index: k * g < len.
    let max_k = (len - 1) / g;
    let mut ks = Vec::with_capacity(n + 1);
    ks.push(0usize);
    let mut cum: u128 = 0;
    for (i, &w) in weights.iter().enumerate().take(n.saturating_sub(1)) {
        cum += u128::from(w);
        // round(len * cum / (total * g)), half up, in u128 (no overflow).
        let den = total * g as u128;
        let ideal = (len as u128 * cum * 2 + den) / (den * 2);
        let ideal = usize::try_from(ideal).unwrap_or(usize::MAX);
        // spec §5: every range keeps at least one granule / the last one item.
        let lo = ks[i] + 1;
        let hi = max_k - (n - 2 - i);
        ks.push(ideal.clamp(lo, hi));
    }
    let mut bounds: Vec<usize> = ks.into_iter().map(|k| k * g).collect();
    bounds.push(len);
    bounds
}

/// Spec §4: granule for a split of `len` items over `n` ranks, preferring
/// `block` (256 for a K-quant's MLP columns, §6) when there are enough.
fn granule(len: usize, n: usize, block: usize) -> usize {
    if block > 32 && len / block >= n {
        block
    } else if len / 32 >= n {
        32
    } else if len / 8 >= n {
        8
    } else {
        1
    }
}

/// Spec §4: contiguous non-empty ranges of `0..len` on granule boundaries.
fn granular_ranges(
    what: &'static str,
    len: usize,
    weights: &[u32],
    block: usize,
) -> Result<Vec<Range<usize>>, PlanError> {
    let n = weights.len();
    // spec §4: `len >= world_size` required.
    if len < n {
        return Err(PlanError::TooFewUnits {
            what,
            units: len,
            world_size: n,
        });
    }
    let b = proportional_bounds(len, granule(len, n, block), weights);
    Ok((0..n).map(|i| b[i]..b[i + 1]).collect())
}

/// Make the split plan (see the module docs for the rules).
pub fn split(shape: &Shape, world_size: usize, weights: Option<&[u32]>) -> Result<Plan, PlanError> {
    split_for(shape, world_size, weights, None)
}

/// [`split`] for slices storing layer matrices as `quant` (spec §6).
pub fn split_for(
    shape: &Shape,
    world_size: usize,
    weights: Option<&[u32]>,
    quant: Option<Quant>,
) -> Result<Plan, PlanError> {
    // spec §1: every shape field non-zero.
    for (field, v) in [
        ("dim", shape.dim),
        ("hidden_dim", shape.hidden_dim),
        ("n_heads", shape.n_heads),
        ("n_kv_heads", shape.n_kv_heads),
        ("head_dim", shape.head_dim),
        ("vocab_size", shape.vocab_size),
        ("n_layers", shape.n_layers),
    ] {
        if v == 0 {
            return Err(PlanError::ZeroDimension { field });
        }
    }
    // spec §1: n_heads % n_kv_heads == 0.
    if !shape.n_heads.is_multiple_of(shape.n_kv_heads) {
        return Err(PlanError::HeadsNotMultipleOfKvHeads {
            n_heads: shape.n_heads,
            n_kv_heads: shape.n_kv_heads,
        });
    }
    // spec §1: world_size in 1..=n_heads.
    if world_size == 0 || world_size > shape.n_heads {
        return Err(PlanError::WorldSize {
            world_size,
            n_heads: shape.n_heads,
        });
    }
    // spec §2: weights length and values.
    let weights: Vec<u32> = match weights {
        None => vec![1; world_size],
        Some(w) => {
            if w.len() != world_size {
                return Err(PlanError::WeightsLen {
                    got: w.len(),
                    world_size,
                });
            }
            if let Some(rank) = w.iter().position(|&x| x == 0) {
                return Err(PlanError::ZeroWeight { rank });
            }
            w.to_vec()
        }
    };

    // spec §3: attention heads, in units of `unit` heads (§6).
    let group = shape.n_heads / shape.n_kv_heads;
    let base = if world_size <= shape.n_kv_heads {
        group
    } else {
        1
    };
    let block = quant.map_or(BLOCK, Quant::block);
    let unit = match quant {
        Some(_) => block_unit(base, shape.head_dim, BLOCK)
            .filter(|&u| shape.n_heads / u >= world_size)
            .map(|u| {
                // A K-quant's super-blocks, when there are enough of them.
                block_unit(base, shape.head_dim, block)
                    .filter(|&k| shape.n_heads / k >= world_size)
                    .unwrap_or(u)
            })
            .unwrap_or(base),
        None => base,
    };
    let b = proportional_bounds(shape.n_heads, unit, &weights);
    let head_ranges: Vec<Range<usize>> = (0..world_size).map(|i| b[i]..b[i + 1]).collect();
    // spec §4: MLP columns and lm_head rows.
    let hidden = granular_ranges("hidden_dim", shape.hidden_dim, &weights, block)?;
    let vocab = granular_ranges("vocab_size", shape.vocab_size, &weights, BLOCK)?;

    let ranks = head_ranges
        .into_iter()
        .zip(hidden)
        .zip(vocab)
        .enumerate()
        .map(|(rank, ((heads, hidden), vocab))| RankSlice {
            rank,
            kv_heads: heads.start / group..heads.end.div_ceil(group),
            heads,
            hidden,
            vocab,
        })
        .collect();
    Ok(Plan {
        shape: *shape,
        world_size,
        weights,
        ranks,
        quant,
    })
}

/// TinyLlama-1.1B's shape, for tests.
#[cfg(test)]
pub(crate) const TINYLLAMA: Shape = Shape {
    dim: 2048,
    hidden_dim: 5632,
    n_heads: 32,
    n_kv_heads: 4,
    head_dim: 64,
    vocab_size: 32000,
    n_layers: 22,
};

/// Spec §6: the smallest multiple of `base` heads whose `head_dim` columns
/// are whole `block`s (`block` times `base` always is).
fn block_unit(base: usize, head_dim: usize, block: usize) -> Option<usize> {
    (1..=block)
        .map(|k| k * base)
        .find(|u| (u * head_dim).is_multiple_of(block))
}

impl Plan {
    /// The same split made for layer matrices stored as `quant` (spec §6:
    /// head ranges may move to block boundaries).
    pub fn with_quant(self, quant: Option<Quant>) -> Result<Plan, PlanError> {
        split_for(&self.shape, self.world_size, Some(&self.weights), quant)
    }

    /// Stable 64-bit identity of the plan: [`checksum64`] of a canonical
    /// little-endian encoding (tag `b"tpi-plan-v1"`, shape fields, world size,
    /// weights, every rank's ranges; all integers as u64 except weights u32;
    /// then, only with a quantization, `b"quant"` and its code byte: 1 Q8_0,
    /// 2 Q4_0, 3 Q4_K, 4 Q6_K, so unquantized plans keep the hash they
    /// always had).
    pub fn hash(&self) -> u64 {
        let mut b = Vec::with_capacity(128 + self.ranks.len() * 72);
        b.extend_from_slice(b"tpi-plan-v1");
        let s = &self.shape;
        for v in [
            s.dim,
            s.hidden_dim,
            s.n_heads,
            s.n_kv_heads,
            s.head_dim,
            s.vocab_size,
            s.n_layers,
            self.world_size,
        ] {
            b.extend_from_slice(&(v as u64).to_le_bytes());
        }
        b.extend_from_slice(&(self.weights.len() as u64).to_le_bytes());
        for w in &self.weights {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&(self.ranks.len() as u64).to_le_bytes());
        for r in &self.ranks {
            for v in [
                r.rank,
                r.heads.start,
                r.heads.end,
                r.kv_heads.start,
                r.kv_heads.end,
                r.hidden.start,
                r.hidden.end,
                r.vocab.start,
                r.vocab.end,
            ] {
                b.extend_from_slice(&(v as u64).to_le_bytes());
            }
        }
        if let Some(q) = self.quant {
            b.extend_from_slice(b"quant");
            b.push(match q {
                Quant::Q8_0 => 1,
                Quant::Q4_0 => 2,
                Quant::Q4_K => 3,
                Quant::Q6_K => 4,
            });
        }
        checksum64(&b)
    }

    /// Rank `r`'s slice. Panics if `r >= world_size`; use [`Plan::try_rank`]
    /// for a rank that comes from outside.
    pub fn rank(&self, r: usize) -> &RankSlice {
        &self.ranks[r]
    }

    /// Rank `r`'s slice, or an error naming `r` and the world size.
    pub fn try_rank(&self, r: usize) -> Result<&RankSlice, PlanError> {
        self.ranks.get(r).ok_or(PlanError::NoSuchRank {
            rank: r,
            world_size: self.world_size,
        })
    }

    /// The `--dry-run` table with a column of each rank's weight bytes
    /// (`crate::split::types::bytes_per_token`).
    pub fn display_with_bytes(&self, bytes: Vec<u64>) -> PlanTable<'_> {
        PlanTable {
            plan: self,
            bytes: Some(bytes),
        }
    }
}

/// Human table of a plan; see [`Plan::display_with_bytes`].
pub struct PlanTable<'a> {
    plan: &'a Plan,
    bytes: Option<Vec<u64>>,
}

fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl fmt::Display for PlanTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.plan;
        let s = &p.shape;
        writeln!(
            f,
            "plan {:016x}: world size {}, {} layers, dim {}, heads {} (kv {}, head_dim {}), hidden {}, vocab {}",
            p.hash(),
            p.world_size,
            s.n_layers,
            s.dim,
            s.n_heads,
            s.n_kv_heads,
            s.head_dim,
            s.hidden_dim,
            s.vocab_size
        )?;
        let bytes = &self.bytes;
        let range = |r: &Range<usize>| format!("{}..{} ({})", r.start, r.end, r.len());
        let mut line = format!(
            "{:>4} {:>6}  {:<16} {:<16} {:<22} {:<24}",
            "rank", "weight", "heads", "kv heads", "intermediate", "vocab"
        );
        if bytes.is_some() {
            line.push_str(&format!(" {:>12}", "bytes"));
        }
        writeln!(f, "{}", line.trim_end())?;
        for (i, r) in p.ranks.iter().enumerate() {
            let mut line = format!(
                "{:>4} {:>6}  {:<16} {:<16} {:<22} {:<24}",
                r.rank,
                p.weights.get(i).copied().unwrap_or(0),
                range(&r.heads),
                range(&r.kv_heads),
                range(&r.hidden),
                range(&r.vocab)
            );
            if let Some(b) = bytes {
                line.push_str(&format!(
                    " {:>12}",
                    fmt_bytes(b.get(i).copied().unwrap_or(0))
                ));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        PlanTable {
            plan: self,
            bytes: None,
        }
        .fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STORIES260K: Shape = Shape {
        dim: 64,
        hidden_dim: 172,
        n_heads: 8,
        n_kv_heads: 4,
        head_dim: 8,
        vocab_size: 512,
        n_layers: 5,
    };
    use super::TINYLLAMA;

    /// Every invariant of the spec; returns a description of the first violation.
    fn check_invariants(shape: &Shape, plan: &Plan) -> Result<(), String> {
        let n = plan.world_size;
        let group = shape.n_heads / shape.n_kv_heads;
        if plan.ranks.len() != n {
            return Err(format!("{} ranks for world size {n}", plan.ranks.len()));
        }
        let cover = |name: &str, get: &dyn Fn(&RankSlice) -> Range<usize>, len: usize| {
            let mut at = 0;
            for r in &plan.ranks {
                let x = get(r);
                if x.start != at || x.end <= x.start {
                    return Err(format!(
                        "{name}: rank {} has {x:?}, expected start {at}, non-empty",
                        r.rank
                    ));
                }
                at = x.end;
            }
            if at != len {
                return Err(format!("{name}: covered 0..{at}, expected 0..{len}"));
            }
            Ok(())
        };
        cover("heads", &|r| r.heads.clone(), shape.n_heads)?;
        cover("hidden", &|r| r.hidden.clone(), shape.hidden_dim)?;
        cover("vocab", &|r| r.vocab.clone(), shape.vocab_size)?;
        for (i, r) in plan.ranks.iter().enumerate() {
            if r.rank != i {
                return Err(format!("rank field {} at index {i}", r.rank));
            }
            let used: std::collections::BTreeSet<usize> =
                r.heads.clone().map(|h| h / group).collect();
            let owned: std::collections::BTreeSet<usize> = r.kv_heads.clone().collect();
            if used != owned {
                return Err(format!(
                    "rank {i}: kv_heads {:?} but heads use {used:?}",
                    r.kv_heads
                ));
            }
        }
        if n <= shape.n_kv_heads {
            cover("kv_heads", &|r| r.kv_heads.clone(), shape.n_kv_heads)?;
        }
        for (name, len, get) in [
            (
                "hidden",
                shape.hidden_dim,
                (|r: &RankSlice| r.hidden.clone()) as fn(&RankSlice) -> Range<usize>,
            ),
            ("vocab", shape.vocab_size, |r: &RankSlice| r.vocab.clone()),
        ] {
            let g = if len / 32 >= n {
                32
            } else if len / 8 >= n {
                8
            } else {
                1
            };
            for r in &plan.ranks[1..] {
                if get(r).start % g != 0 {
                    return Err(format!(
                        "{name}: boundary {} not a multiple of {g}",
                        get(r).start
                    ));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn stories260k_all_world_sizes() {
        for n in 1..=8 {
            let plan = split(&STORIES260K, n, None).unwrap();
            check_invariants(&STORIES260K, &plan).unwrap();
        }
        let p4 = split(&STORIES260K, 4, None).unwrap();
        let heads: Vec<_> = p4.ranks.iter().map(|r| r.heads.clone()).collect();
        assert_eq!(heads, vec![0..2, 2..4, 4..6, 6..8]);
        let kv: Vec<_> = p4.ranks.iter().map(|r| r.kv_heads.clone()).collect();
        assert_eq!(kv, vec![0..1, 1..2, 2..3, 3..4]);
        // 172 / 32 = 5 >= 4: boundaries on the multiples of 32 nearest 43, 86, 129.
        let hidden: Vec<_> = p4.ranks.iter().map(|r| r.hidden.clone()).collect();
        assert_eq!(hidden, vec![0..32, 32..96, 96..128, 128..172]);
        let vocab: Vec<_> = p4.ranks.iter().map(|r| r.vocab.clone()).collect();
        assert_eq!(vocab, vec![0..128, 128..256, 256..384, 384..512]);
        // N = 8 > kv 4: one query head each, kv replicated across pairs;
        // 172 / 32 = 5 < 8, 172 / 8 = 21 >= 8 → granule 8.
        let p8 = split(&STORIES260K, 8, None).unwrap();
        for (i, r) in p8.ranks.iter().enumerate() {
            assert_eq!(r.heads, i..i + 1);
            assert_eq!(r.kv_heads, i / 2..i / 2 + 1);
            if i > 0 {
                assert_eq!(r.hidden.start % 8, 0);
            }
        }
        // N = 1 holds everything.
        let p1 = split(&STORIES260K, 1, None).unwrap();
        assert_eq!(
            p1.ranks[0],
            RankSlice {
                rank: 0,
                heads: 0..8,
                kv_heads: 0..4,
                hidden: 0..172,
                vocab: 0..512
            }
        );
    }

    #[test]
    fn tinyllama_two_ranks() {
        let p = split(&TINYLLAMA, 2, None).unwrap();
        check_invariants(&TINYLLAMA, &p).unwrap();
        assert_eq!(
            p.ranks,
            vec![
                RankSlice {
                    rank: 0,
                    heads: 0..16,
                    kv_heads: 0..2,
                    hidden: 0..2816,
                    vocab: 0..16000
                },
                RankSlice {
                    rank: 1,
                    heads: 16..32,
                    kv_heads: 2..4,
                    hidden: 2816..5632,
                    vocab: 16000..32000
                },
            ]
        );
        // Weighted 1:3 over 4 kv heads: 1 and 3 kv heads.
        let w = split(&TINYLLAMA, 2, Some(&[1, 3])).unwrap();
        check_invariants(&TINYLLAMA, &w).unwrap();
        assert_eq!(w.ranks[0].kv_heads, 0..1);
        assert_eq!(w.ranks[0].heads, 0..8);
        assert_eq!(w.ranks[0].hidden, 0..1408);
        assert_eq!(w.ranks[0].vocab, 0..8000);
    }

    #[test]
    fn errors() {
        let s = STORIES260K;
        assert_eq!(
            split(&s, 0, None),
            Err(PlanError::WorldSize {
                world_size: 0,
                n_heads: 8
            })
        );
        assert_eq!(
            split(&s, 9, None),
            Err(PlanError::WorldSize {
                world_size: 9,
                n_heads: 8
            })
        );
        assert_eq!(
            split(&s, 2, Some(&[1])),
            Err(PlanError::WeightsLen {
                got: 1,
                world_size: 2
            })
        );
        assert_eq!(
            split(&s, 2, Some(&[1, 0])),
            Err(PlanError::ZeroWeight { rank: 1 })
        );
        let bad = Shape { n_kv_heads: 3, ..s };
        assert_eq!(
            split(&bad, 1, None),
            Err(PlanError::HeadsNotMultipleOfKvHeads {
                n_heads: 8,
                n_kv_heads: 3
            })
        );
        let zero = Shape { head_dim: 0, ..s };
        assert_eq!(
            split(&zero, 1, None),
            Err(PlanError::ZeroDimension { field: "head_dim" })
        );
        let small = Shape { hidden_dim: 3, ..s };
        assert_eq!(
            split(&small, 4, None),
            Err(PlanError::TooFewUnits {
                what: "hidden_dim",
                units: 3,
                world_size: 4
            })
        );
        let small = Shape { vocab_size: 2, ..s };
        assert_eq!(
            split(&small, 4, None),
            Err(PlanError::TooFewUnits {
                what: "vocab_size",
                units: 2,
                world_size: 4
            })
        );
        let p = split(&s, 2, None).unwrap();
        assert_eq!(
            p.try_rank(2),
            Err(PlanError::NoSuchRank {
                rank: 2,
                world_size: 2
            })
        );
        assert!(p.try_rank(1).is_ok());
        // Display names the values.
        let msg = PlanError::WorldSize {
            world_size: 9,
            n_heads: 8,
        }
        .to_string();
        assert!(msg.contains('9') && msg.contains('8'), "{msg}");
    }

    #[test]
    fn hash_is_pinned_and_sensitive() {
        let p = split(&STORIES260K, 2, None).unwrap();
        // Pinned: a change here means old peers would reject new ones.
        assert_eq!(p.hash(), PINNED_STORIES_N2);
        assert_ne!(
            p.hash(),
            split(&STORIES260K, 2, Some(&[1, 2])).unwrap().hash()
        );
        assert_ne!(p.hash(), split(&STORIES260K, 3, None).unwrap().hash());
        let q8 = p.clone().with_quant(Some(Quant::Q8_0)).unwrap().hash();
        let q4 = p.clone().with_quant(Some(Quant::Q4_0)).unwrap().hash();
        assert!(q8 != p.hash() && q4 != p.hash() && q8 != q4);
        assert_eq!(
            p.hash(),
            split(&STORIES260K, 2, Some(&[1, 1])).unwrap().hash()
        );
    }

    const PINNED_STORIES_N2: u64 = 1795602913549000526;

    #[test]
    fn display_table() {
        let p = split(&STORIES260K, 3, None).unwrap();
        let t = p.display_with_bytes(vec![1, 2048, 3 << 20]).to_string();
        assert!(t.contains("2.00 KiB") && t.contains("3.00 MiB"), "{t}");
        assert!(t.contains("intermediate") && t.contains("bytes"), "{t}");
        assert_eq!(t.lines().count(), 2 + 3, "{t}");
        let plain = p.to_string();
        assert!(!plain.contains("bytes"));
        assert!(
            plain.contains("0..2 (2)") && plain.contains("128..172 (44)"),
            "{plain}"
        );
        assert!(plain.lines().all(|l| !l.ends_with(' ')), "{plain}");
    }

    fn arb_case() -> impl Strategy<Value = (Shape, usize, Vec<u32>)> {
        (
            1usize..=16,
            1usize..=8,
            1usize..=128,
            1usize..=5000,
            1usize..=70000,
        )
            .prop_flat_map(|(kv, group, head_dim, hidden, vocab)| {
                let n_heads = kv * group;
                let max_n = n_heads.min(hidden).min(vocab);
                let shape = Shape {
                    dim: 64,
                    hidden_dim: hidden,
                    n_heads,
                    n_kv_heads: kv,
                    head_dim,
                    vocab_size: vocab,
                    n_layers: 2,
                };
                (Just(shape), 1..=max_n)
            })
            .prop_flat_map(|(shape, n)| {
                (Just(shape), Just(n), proptest::collection::vec(1u32..=4, n))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn split_invariants((shape, n, weights) in arb_case()) {
            let plan = split(&shape, n, Some(&weights)).unwrap();
            if let Err(e) = check_invariants(&shape, &plan) {
                return Err(TestCaseError::fail(format!("{e}\nplan: {plan:?}")));
            }
            // Weights respected exactly when the head units divide evenly.
            let group = shape.n_heads / shape.n_kv_heads;
            let units = if n <= shape.n_kv_heads { shape.n_kv_heads } else { shape.n_heads };
            let unit = if n <= shape.n_kv_heads { group } else { 1 };
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            if units % total == 0 {
                for (r, &w) in plan.ranks.iter().zip(&weights) {
                    prop_assert_eq!(r.heads.len(), units / total * w as usize * unit);
                }
            }
            // A heavier rank never gets fewer heads than a lighter one when divisible.
            if units % total == 0 {
                for (a, wa) in plan.ranks.iter().zip(&weights) {
                    for (b, wb) in plan.ranks.iter().zip(&weights) {
                        if wa > wb {
                            prop_assert!(a.heads.len() >= b.heads.len());
                        }
                    }
                }
            }
        }

        #[test]
        fn quantized_split_puts_heads_on_blocks((shape, n, weights) in arb_case()) {
            let plan = split_for(&shape, n, Some(&weights), Some(Quant::Q4_0)).unwrap();
            if let Err(e) = check_invariants(&shape, &plan) {
                return Err(TestCaseError::fail(format!("{e}\nplan: {plan:?}")));
            }
            let plain = split(&shape, n, Some(&weights)).unwrap();
            prop_assert_eq!(plan.quant, Some(Quant::Q4_0));
            prop_assert_eq!(&plan.clone().with_quant(None).unwrap(), &plain);
            // Every inner head boundary on a block when enough units exist.
            let base = if n <= shape.n_kv_heads { shape.n_heads / shape.n_kv_heads } else { 1 };
            let unit = block_unit(base, shape.head_dim, 32).unwrap();
            prop_assert_eq!(unit % base, 0);
            prop_assert_eq!((unit * shape.head_dim) % 32, 0);
            if shape.n_heads / unit >= n {
                for r in &plan.ranks[..n - 1] {
                    prop_assert_eq!((r.heads.end * shape.head_dim) % 32, 0, "{:?}", plan);
                }
            } else {
                prop_assert_eq!(&plan.ranks, &plain.ranks);
            }
        }

        #[test]
        fn k_quant_split_puts_heads_and_mlp_columns_on_super_blocks(
            (shape, n, weights) in arb_case(),
            q in prop::sample::select(vec![Quant::Q4_K, Quant::Q6_K]),
        ) {
            let plan = split_for(&shape, n, Some(&weights), Some(q)).unwrap();
            if let Err(e) = check_invariants(&shape, &plan) {
                return Err(TestCaseError::fail(format!("{e}\nplan: {plan:?}")));
            }
            let base = if n <= shape.n_kv_heads { shape.n_heads / shape.n_kv_heads } else { 1 };
            let unit = block_unit(base, shape.head_dim, 256).unwrap();
            prop_assert_eq!((unit * shape.head_dim) % 256, 0);
            let inner = &plan.ranks[..n - 1];
            if shape.n_heads / unit >= n {
                for r in inner {
                    prop_assert_eq!((r.heads.end * shape.head_dim) % 256, 0, "{:?}", plan);
                }
            } else {
                // Else as for a 32-block type.
                let q4 = split_for(&shape, n, Some(&weights), Some(Quant::Q4_0)).unwrap();
                prop_assert_eq!(
                    plan.ranks.iter().map(|r| r.heads.clone()).collect::<Vec<_>>(),
                    q4.ranks.iter().map(|r| r.heads.clone()).collect::<Vec<_>>()
                );
            }
            if shape.hidden_dim / 256 >= n {
                for r in inner {
                    prop_assert_eq!(r.hidden.end % 256, 0, "{:?}", plan);
                }
            } else {
                let plain = split(&shape, n, Some(&weights)).unwrap();
                prop_assert_eq!(
                    plan.ranks.iter().map(|r| r.hidden.clone()).collect::<Vec<_>>(),
                    plain.ranks.iter().map(|r| r.hidden.clone()).collect::<Vec<_>>()
                );
            }
        }

        #[test]
        fn proportional_within_one_granule(
            len in 1usize..200_000,
            g in prop::sample::select(vec![1usize, 8, 32]),
            weights in proptest::collection::vec(1u32..=4, 1..64),
        ) {
            let n = weights.len();
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            prop_assume!(len / g >= n);
            let b = proportional_bounds(len, g, &weights);
            prop_assert_eq!(b.len(), n + 1);
            prop_assert_eq!(b[0], 0);
            prop_assert_eq!(b[n], len);
            for i in 0..n {
                prop_assert!(b[i + 1] > b[i]);
                if i > 0 {
                    prop_assert_eq!(b[i] % g, 0);
                }
                if len >= total * g {
                    // No clamping: |count * W - len * w| < g * W.
                    let c = (b[i + 1] - b[i]) as i128 * total as i128;
                    let q = len as i128 * weights[i] as i128;
                    prop_assert!((c - q).abs() < (g * total) as i128, "rank {} count {} quota {}/{}", i, b[i + 1] - b[i], q, total);
                }
            }
        }
    }
}
