//! One rank's forward pass over its slice of a Llama-family model.
//!
//! The split follows Megatron/TPI-LLM: a rank holds some query heads (and the
//! KV heads they use), some MLP columns and some vocab rows. With one rank the
//! "slice" is the whole model and the collective is a no-op. The forward reads
//! in llama2.c's style: buffers allocated once in [`State`], one line per step.
//!
//! Weight matrices stay in their stored dtype (f32/f16/bf16) wherever they
//! live (mmapped safetensors, a slice file, a window slot); the kernels widen
//! on the fly. 1-D tensors (norm weights, biases) are converted to f32 once at
//! load: O(layers x dim), a few MB even for 70B models.

use super::collective::{Collective, Op};
use super::error::EngineError;
use super::par::Par;
use crate::weights::{Dims, RankWeights, Resident};

/// Activations and KV cache, allocated once before generation. The
/// per-token buffers hold `batch` rows (one per token of a forward; more
/// than one only while a prompt is prefilled).
pub struct State {
    /// residual stream `[batch][dim]`
    x: Vec<f32>,
    /// normed input `[batch][dim]`
    xb: Vec<f32>,
    /// partial sums to reduce `[batch][dim]`
    xb2: Vec<f32>,
    /// `[batch][q_dim]`, `[batch][kv_dim]`, `[batch][kv_dim]`
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// attention output of this rank's heads `[batch][q_dim]`
    att_out: Vec<f32>,
    /// attention scores `[seq_len]`
    att: Vec<f32>,
    /// MLP `[batch][hidden]` x2
    hb: Vec<f32>,
    hb2: Vec<f32>,
    /// `[batch][head_dim/2]`
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// this rank's logits rows `[vocab]` and the gathered ones `[vocab_total]`
    my_logits: Vec<f32>,
    pub logits: Vec<f32>,
    /// per layer `[seq_len][kv_dim]`
    key_cache: Vec<Vec<f32>>,
    value_cache: Vec<Vec<f32>>,
    pub seq_len: usize,
    /// Width of a KV cache row (this rank's KV heads x head_dim).
    kv_dim: usize,
    /// Tokens the per-token buffers hold.
    batch: usize,
}

impl State {
    /// Buffers for one token and a KV cache of `seq_len` positions, at most
    /// [`INITIAL_POSITIONS`] at first: the cache grows by doubling
    /// ([`State::grow_to`]), so memory follows the positions used, and
    /// every allocation that depends on the run is fallible.
    pub fn new(d: &Dims, seq_len: usize) -> Result<State, EngineError> {
        let seq_len = seq_len.clamp(1, INITIAL_POSITIONS);
        let kv = d.kv_dim();
        let cache = |_| zeroed(seq_len.saturating_mul(kv), "the KV cache");
        Ok(State {
            x: vec![0.0; d.dim],
            xb: vec![0.0; d.dim],
            xb2: vec![0.0; d.dim],
            q: vec![0.0; d.q_dim()],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            att_out: vec![0.0; d.q_dim()],
            att: zeroed(seq_len, "attention scores")?,
            hb: vec![0.0; d.hidden],
            hb2: vec![0.0; d.hidden],
            cos: vec![0.0; d.head_dim / 2],
            sin: vec![0.0; d.head_dim / 2],
            my_logits: vec![0.0; d.vocab],
            logits: vec![0.0; d.vocab_total],
            key_cache: (0..d.n_layers).map(cache).collect::<Result<_, _>>()?,
            value_cache: (0..d.n_layers).map(cache).collect::<Result<_, _>>()?,
            seq_len,
            kv_dim: kv,
            batch: 1,
        })
    }

    /// Makes the per-token buffers hold `t` tokens.
    fn ensure_batch(&mut self, d: &Dims, t: usize) {
        if t <= self.batch {
            return;
        }
        let half = d.head_dim / 2;
        for (buf, width) in [
            (&mut self.x, d.dim),
            (&mut self.xb, d.dim),
            (&mut self.xb2, d.dim),
            (&mut self.q, d.q_dim()),
            (&mut self.k, d.kv_dim()),
            (&mut self.v, d.kv_dim()),
            (&mut self.att_out, d.q_dim()),
            (&mut self.hb, d.hidden),
            (&mut self.hb2, d.hidden),
            (&mut self.cos, half),
            (&mut self.sin, half),
        ] {
            buf.resize(t * width, 0.0);
        }
        self.batch = t;
    }

    /// Makes room in the KV cache for position `pos` (doubling, at most
    /// `max` positions).
    pub fn grow_to(&mut self, pos: usize, max: usize) -> Result<(), EngineError> {
        if pos < self.seq_len {
            return Ok(());
        }
        if pos >= max {
            return Err(EngineError::BeyondContext { pos, max });
        }
        // Not k.len(): k holds a whole prefill batch.
        let kv_dim = self.kv_dim;
        let new_len = (pos + 1).max(self.seq_len * 2).min(max);
        for c in self.key_cache.iter_mut().chain(self.value_cache.iter_mut()) {
            let want = new_len.saturating_mul(kv_dim);
            c.try_reserve_exact(want.saturating_sub(c.len()))
                .map_err(|_| EngineError::Memory {
                    what: format!("the KV cache for {new_len} positions"),
                    bytes: (want as u64).saturating_mul(4),
                })?;
            c.resize(want, 0.0);
        }
        self.att
            .try_reserve_exact(new_len.saturating_sub(self.att.len()))
            .map_err(|_| EngineError::Memory {
                what: format!("attention scores for {new_len} positions"),
                bytes: (new_len as u64).saturating_mul(4),
            })?;
        self.att.resize(new_len, 0.0);
        self.seq_len = new_len;
        Ok(())
    }

    /// Bytes held by the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.key_cache
            .iter()
            .chain(&self.value_cache)
            .map(|c| c.len() * 4)
            .sum()
    }
}

/// KV cache positions allocated up front; more come by doubling.
pub const INITIAL_POSITIONS: usize = 256;

/// `n` zeroed floats, or an error naming `what` when they cannot be had
/// (a `vec!` would abort the process).
fn zeroed(n: usize, what: &str) -> Result<Vec<f32>, EngineError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| EngineError::Memory {
        what: what.to_string(),
        bytes: (n as u64).saturating_mul(4),
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// Time spent in each phase of a forward, accumulated.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub comm: std::time::Duration,
}

/// One forward pass for `tokens` at positions `pos0..pos0 + tokens.len()`
/// (one token while decoding, several while prefilling a prompt on a rank
/// whose collective allows it). Returns whether `state.logits` holds the
/// full logits of the last token on this rank (only when `want_logits`).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    res: &Resident,
    w: &mut dyn RankWeights,
    comm: &mut dyn Collective,
    par: &Par,
    s: &mut State,
    tokens: &[u32],
    pos0: usize,
    want_logits: bool,
    timing: &mut Timing,
) -> Result<bool, EngineError> {
    let d = &res.dims;
    let t = tokens.len();
    if t == 0 {
        return Err(EngineError::NoTokens);
    }
    let last = pos0 + t - 1;
    s.grow_to(last, d.max_seq_len.max(s.seq_len))?;
    s.ensure_batch(d, t);
    let (dim, hd, kv_dim, q_dim) = (d.dim, d.head_dim, d.kv_dim(), d.q_dim());
    let half = hd / 2;
    for (i, &token) in tokens.iter().enumerate() {
        w.embed(token, &mut s.x[i * dim..(i + 1) * dim])
            .map_err(weights)?;
        let angles = res.inv_freq.iter().map(|f| (pos0 + i) as f32 * f);
        for (j, angle) in angles.enumerate() {
            s.cos[i * half + j] = angle.cos();
            s.sin[i * half + j] = angle.sin();
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let kernel = par.backend();

    for l in 0..d.n_layers {
        let vecs = &res.layers[l];
        let m = w.acquire(l).map_err(weights)?;

        // attention: q,k,v = my heads of rmsnorm(x)
        rmsnorm_rows(
            &mut s.xb[..t * dim],
            &s.x[..t * dim],
            &vecs.attn_norm,
            d.norm_eps,
        );
        let xb = &s.xb[..t * dim];
        par.gemv3(
            t,
            (m.q.weights().map_err(weights)?, xb, &mut s.q[..t * q_dim]),
            (m.k.weights().map_err(weights)?, xb, &mut s.k[..t * kv_dim]),
            (m.v.weights().map_err(weights)?, xb, &mut s.v[..t * kv_dim]),
        );
        let (kc, vc) = (&mut s.key_cache[l], &mut s.value_cache[l]);
        for i in 0..t {
            let (q, k, v) = (
                &mut s.q[i * q_dim..(i + 1) * q_dim],
                &mut s.k[i * kv_dim..(i + 1) * kv_dim],
                &mut s.v[i * kv_dim..(i + 1) * kv_dim],
            );
            let (cos, sin) = (
                &s.cos[i * half..(i + 1) * half],
                &s.sin[i * half..(i + 1) * half],
            );
            add_bias(q, &vecs.q_bias);
            add_bias(k, &vecs.k_bias);
            add_bias(v, &vecs.v_bias);
            tpi_kernels::rope(q, cos, sin);
            tpi_kernels::rope(k, cos, sin);
            let p = pos0 + i;
            kc[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(k);
            vc[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(v);
        }

        // softmax(q k^T / sqrt(hd)) v, per token and query head, over
        // positions 0..=its own (causal)
        for i in 0..t {
            let p = pos0 + i;
            for h in 0..d.n_heads {
                let kvh = (d.first_head + h) / d.kv_group - d.first_kv_head;
                let q = &s.q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
                let att = &mut s.att[..=p];
                for (pt, a) in att.iter_mut().enumerate() {
                    let k = &kc[pt * kv_dim + kvh * hd..pt * kv_dim + (kvh + 1) * hd];
                    *a = kernel.dot(q, k) * scale;
                }
                tpi_kernels::softmax(att);
                let out = &mut s.att_out[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
                out.fill(0.0);
                for (pt, a) in att.iter().enumerate() {
                    kernel.axpy(
                        out,
                        *a,
                        &vc[pt * kv_dim + kvh * hd..pt * kv_dim + (kvh + 1) * hd],
                    );
                }
            }
        }
        par.gemv_t(
            t,
            m.o.weights().map_err(weights)?,
            &s.att_out[..t * q_dim],
            &mut s.xb2[..t * dim],
        );

        // MLP: silu(gate x) * (up x), then down; partial sums of my columns
        let (gate, up, down) = (
            m.gate.weights().map_err(weights)?,
            m.up.weights().map_err(weights)?,
            m.down.weights().map_err(weights)?,
        );
        let t0 = std::time::Instant::now();
        comm.allreduce_sum(&mut s.xb2[..t * dim], l, Op::Attention)
            .map_err(EngineError::Comm)?;
        timing.comm += t0.elapsed();
        add_into(&mut s.x[..t * dim], &s.xb2[..t * dim]);
        rmsnorm_rows(
            &mut s.xb[..t * dim],
            &s.x[..t * dim],
            &vecs.ffn_norm,
            d.norm_eps,
        );
        let (xb, hn) = (&s.xb[..t * dim], t * d.hidden);
        par.gemv2(t, (gate, xb, &mut s.hb[..hn]), (up, xb, &mut s.hb2[..hn]));
        tpi_kernels::silu_mul(&mut s.hb[..hn], &s.hb2[..hn]);
        par.gemv_t(t, down, &s.hb[..hn], &mut s.xb2[..t * dim]);
        w.release(l).map_err(weights)?;
        let t0 = std::time::Instant::now();
        comm.allreduce_sum(&mut s.xb2[..t * dim], l, Op::Mlp)
            .map_err(EngineError::Comm)?;
        timing.comm += t0.elapsed();
        add_into(&mut s.x[..t * dim], &s.xb2[..t * dim]);
        check_finite(
            &s.x[..t * dim],
            dim,
            || format!("the output of layer {l}"),
            pos0,
        )?;
    }

    // logits of the last token from this rank's lm_head rows; a streamed
    // lm_head is consumed part by part even when no logits are wanted, so
    // the window's read order stays the forward's
    if want_logits {
        let x_last = &s.x[(t - 1) * dim..t * dim];
        tpi_kernels::rmsnorm(&mut s.xb[..dim], x_last, &res.final_norm, d.norm_eps);
    }
    for part in 0..w.lm_head_parts() {
        let (row0, lm) = w.lm_head(part).map_err(weights)?;
        if want_logits {
            let rows = row0..row0.saturating_add(lm.rows);
            let out = s
                .my_logits
                .get_mut(rows.clone())
                .ok_or(EngineError::LmHeadRows {
                    part,
                    rows,
                    vocab: d.vocab,
                })?;
            par.gemv(lm.weights().map_err(weights)?, &s.xb[..dim], out);
        }
        w.release_lm_head(part).map_err(weights)?;
    }
    if !want_logits {
        return Ok(false);
    }
    let t0 = std::time::Instant::now();
    let full = comm
        .gather_logits(&s.my_logits, &mut s.logits)
        .map_err(EngineError::Comm)?;
    timing.comm += t0.elapsed();
    if full {
        check_finite(&s.logits, s.logits.len(), || "the logits".into(), last)?;
    }
    Ok(full)
}

/// Errs, naming `stage` and the position, when a `width`-wide row of `x`
/// (row `i` at position `pos0 + i`) holds NaN or infinity: a NaN in the
/// weights must not become a junk token.
fn check_finite(
    x: &[f32],
    width: usize,
    stage: impl FnOnce() -> String,
    pos0: usize,
) -> Result<(), EngineError> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(EngineError::NonFinite {
            stage: stage(),
            pos: pos0 + i / width.max(1),
        }),
    }
}

/// A weights source's error as the engine's.
fn weights(e: impl Into<super::error::Cause>) -> EngineError {
    EngineError::Weights(e.into())
}

/// rmsnorm of each `dim`-wide row of `x` into `out`.
fn rmsnorm_rows(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len().max(1);
    for (o, x) in out.chunks_mut(dim).zip(x.chunks(dim)) {
        tpi_kernels::rmsnorm(o, x, weight, eps);
    }
}

fn add_bias(x: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(b) = bias {
        add_into(x, b);
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Dims {
        Dims {
            dim: 64,
            head_dim: 16,
            n_layers: 3,
            n_heads: 4,
            n_kv_heads: 2,
            kv_group: 2,
            first_head: 0,
            first_kv_head: 0,
            hidden: 128,
            vocab: 100,
            vocab_total: 100,
            norm_eps: 1e-5,
            max_seq_len: 4096,
        }
    }

    #[test]
    fn kv_cache_grows_with_positions_not_with_the_batch() {
        let d = dims();
        let kv_dim = d.n_kv_heads * d.head_dim;
        let bytes = |positions: usize| 2 * d.n_layers * positions * kv_dim * 4;
        // A long run starts with INITIAL_POSITIONS, not its whole length.
        let mut s = State::new(&d, 4000).expect("state");
        assert_eq!(s.kv_cache_bytes(), bytes(INITIAL_POSITIONS));
        // After a prefill batch the per-token buffers are 64 tokens wide;
        // the cache still grows by rows of kv_dim.
        s.ensure_batch(&d, 64);
        s.grow_to(300, d.max_seq_len).expect("grow");
        assert_eq!(s.seq_len, 2 * INITIAL_POSITIONS);
        assert_eq!(s.kv_cache_bytes(), bytes(2 * INITIAL_POSITIONS));
        // Never past the context.
        s.grow_to(4095, d.max_seq_len).expect("grow");
        assert_eq!(s.seq_len, 4096);
        assert!(s.grow_to(4096, d.max_seq_len).is_err());
    }
}
