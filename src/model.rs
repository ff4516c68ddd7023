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

use crate::config::Config;
use crate::error::{Error, Result};
use crate::par::Par;
use crate::safetensors::Dtype;
use tpi_kernels::{Backend, Weights};

/// Which part of the model this rank holds (the whole model for one rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Query heads `[start, end)`.
    pub heads: std::ops::Range<usize>,
    /// KV heads `[start, end)`: exactly those the query heads use.
    pub kv_heads: std::ops::Range<usize>,
    /// MLP intermediate columns.
    pub hidden: std::ops::Range<usize>,
    /// lm_head rows (vocab ids) this rank computes.
    pub vocab: std::ops::Range<usize>,
}

impl Part {
    /// The whole model, for a single rank.
    pub fn whole(cfg: &Config) -> Part {
        Part {
            heads: 0..cfg.n_heads,
            kv_heads: 0..cfg.n_kv_heads,
            hidden: 0..cfg.hidden_dim,
            vocab: 0..cfg.vocab_size,
        }
    }
}

/// A matrix in its stored dtype: `rows x cols`, row-major, as raw bytes.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

impl<'a> Mat<'a> {
    /// Typed view for the kernels. Fails only when the bytes are misaligned
    /// or of the wrong length, which loaders rule out before building a `Mat`.
    pub fn weights(&self) -> Result<Weights<'a>> {
        let bad = || {
            Error::Model(format!(
                "matrix bytes misaligned or of wrong length ({} bytes)",
                self.bytes.len()
            ))
        };
        let w = match self.dtype {
            Dtype::F32 => Weights::F32(bytemuck::try_cast_slice(self.bytes).map_err(|_| bad())?),
            Dtype::F16 => Weights::F16(bytemuck::try_cast_slice(self.bytes).map_err(|_| bad())?),
            Dtype::BF16 => Weights::BF16(bytemuck::try_cast_slice(self.bytes).map_err(|_| bad())?),
        };
        if w.len() != self.rows * self.cols {
            return Err(bad());
        }
        Ok(w)
    }

    /// Row `r` widened to f32 into `out` (embedding lookups).
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let w = self.weights()?;
        if r >= self.rows || out.len() != self.cols {
            return Err(Error::Model(format!(
                "row {r} out of range (rows {})",
                self.rows
            )));
        }
        let row = w.slice(r * self.cols, (r + 1) * self.cols);
        match row {
            Weights::F32(v) => out.copy_from_slice(v),
            Weights::F16(v) => out.iter_mut().zip(v).for_each(|(o, x)| *o = x.to_f32()),
            Weights::BF16(v) => out.iter_mut().zip(v).for_each(|(o, x)| *o = x.to_f32()),
        }
        Ok(())
    }
}

/// The matrices of one layer for this rank, kernel-ready.
#[derive(Clone, Copy, Debug)]
pub struct LayerMats<'a> {
    /// `[my_heads*head_dim][dim]`
    pub q: Mat<'a>,
    /// `[my_kv_heads*head_dim][dim]`
    pub k: Mat<'a>,
    /// `[my_kv_heads*head_dim][dim]`
    pub v: Mat<'a>,
    /// `[dim][my_heads*head_dim]` (input columns of this rank's heads)
    pub o: Mat<'a>,
    /// `[my_hidden][dim]`
    pub gate: Mat<'a>,
    /// `[my_hidden][dim]`
    pub up: Mat<'a>,
    /// `[dim][my_hidden]`
    pub down: Mat<'a>,
}

/// Small per-layer vectors, resident in f32.
#[derive(Clone, Debug, Default)]
pub struct LayerVecs {
    /// `[dim]`
    pub attn_norm: Vec<f32>,
    /// `[dim]`
    pub ffn_norm: Vec<f32>,
    /// `[my_heads*head_dim]`, `[my_kv*head_dim]` x2 when the model has q/k/v biases.
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
}

/// The two allreduces of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Attention,
    Mlp,
}

/// How partial results of this rank meet the other ranks'.
pub trait Collective {
    /// A forward for `token` at `pos` begins (the hub tells the workers).
    fn begin_step(&mut self, _token: u32, _pos: usize, _want_logits: bool) -> Result<()> {
        Ok(())
    }
    /// Sum `x` over all ranks, in place (every rank ends with the same sum).
    fn allreduce_sum(&mut self, x: &mut [f32], layer: usize, op: Op) -> Result<()>;
    /// Gather each rank's logits rows into `full` on rank 0. Returns whether
    /// `full` holds the complete logits on this rank.
    fn gather_logits(&mut self, mine: &[f32], full: &mut [f32]) -> Result<bool>;
}

/// The collective of a single rank: nothing to exchange.
pub struct Solo;

impl Collective for Solo {
    fn allreduce_sum(&mut self, _x: &mut [f32], _layer: usize, _op: Op) -> Result<()> {
        Ok(())
    }
    fn gather_logits(&mut self, mine: &[f32], full: &mut [f32]) -> Result<bool> {
        full.copy_from_slice(mine);
        Ok(true)
    }
}

/// Where a rank's layer matrices come from (mmapped file, window slots).
pub trait LayerSource {
    /// The matrices of layer `l`, valid until `release(l)`.
    fn acquire(&mut self, l: usize) -> Result<LayerMats<'_>>;
    /// Compute no longer needs layer `l`'s matrices.
    fn release(&mut self, _l: usize) -> Result<()> {
        Ok(())
    }
}

/// Resolved dimensions of this rank's slice.
#[derive(Clone, Debug)]
pub struct Dims {
    pub dim: usize,
    pub head_dim: usize,
    pub n_layers: usize,
    /// Query heads of this rank.
    pub n_heads: usize,
    /// KV heads of this rank.
    pub n_kv_heads: usize,
    /// Query heads per KV head (global).
    pub kv_group: usize,
    /// Global index of this rank's first query head and first KV head.
    pub first_head: usize,
    pub first_kv_head: usize,
    /// MLP columns of this rank.
    pub hidden: usize,
    /// Vocab rows of this rank and of the whole model.
    pub vocab: usize,
    pub vocab_total: usize,
    pub norm_eps: f32,
    /// Longest context the model supports (max_position_embeddings).
    pub max_seq_len: usize,
}

impl Dims {
    pub fn new(cfg: &Config, part: &Part) -> Dims {
        Dims {
            dim: cfg.dim,
            head_dim: cfg.head_dim,
            n_layers: cfg.n_layers,
            n_heads: part.heads.len(),
            n_kv_heads: part.kv_heads.len(),
            kv_group: cfg.n_heads / cfg.n_kv_heads.max(1),
            first_head: part.heads.start,
            first_kv_head: part.kv_heads.start,
            hidden: part.hidden.len(),
            vocab: part.vocab.len(),
            vocab_total: cfg.vocab_size,
            norm_eps: cfg.norm_eps,
            max_seq_len: cfg.max_seq_len,
        }
    }
    fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Everything of a rank's model except the layer matrices.
pub struct Resident {
    pub dims: Dims,
    pub layers: Vec<LayerVecs>,
    /// `[dim]`
    pub final_norm: Vec<f32>,
    /// `[head_dim/2]`
    pub inv_freq: Vec<f32>,
}

/// Activations and KV cache, allocated once before generation.
pub struct State {
    /// residual stream `[dim]`
    x: Vec<f32>,
    /// normed input / attention output `[max(dim, q_dim)]`
    xb: Vec<f32>,
    /// partial sums to reduce `[dim]`
    xb2: Vec<f32>,
    /// `[q_dim]`, `[kv_dim]`, `[kv_dim]`
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// attention output of this rank's heads `[q_dim]`
    att_out: Vec<f32>,
    /// attention scores `[seq_len]`
    att: Vec<f32>,
    /// MLP `[hidden]` x2
    hb: Vec<f32>,
    hb2: Vec<f32>,
    /// `[head_dim/2]`
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// this rank's logits rows `[vocab]` and the gathered ones `[vocab_total]`
    my_logits: Vec<f32>,
    pub logits: Vec<f32>,
    /// per layer `[seq_len][kv_dim]`
    key_cache: Vec<Vec<f32>>,
    value_cache: Vec<Vec<f32>>,
    pub seq_len: usize,
}

impl State {
    pub fn new(d: &Dims, seq_len: usize) -> State {
        let kv = d.kv_dim();
        State {
            x: vec![0.0; d.dim],
            xb: vec![0.0; d.dim.max(d.q_dim())],
            xb2: vec![0.0; d.dim],
            q: vec![0.0; d.q_dim()],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            att_out: vec![0.0; d.q_dim()],
            att: vec![0.0; seq_len],
            hb: vec![0.0; d.hidden],
            hb2: vec![0.0; d.hidden],
            cos: vec![0.0; d.head_dim / 2],
            sin: vec![0.0; d.head_dim / 2],
            my_logits: vec![0.0; d.vocab],
            logits: vec![0.0; d.vocab_total],
            key_cache: (0..d.n_layers).map(|_| vec![0.0; seq_len * kv]).collect(),
            value_cache: (0..d.n_layers).map(|_| vec![0.0; seq_len * kv]).collect(),
            seq_len,
        }
    }

    /// Makes room in the KV cache for position `pos` (doubling, at most
    /// `max` positions).
    pub fn grow_to(&mut self, pos: usize, max: usize) -> Result<()> {
        if pos < self.seq_len {
            return Ok(());
        }
        if pos >= max {
            return Err(Error::Model(format!(
                "position {pos} beyond the model's context of {max} tokens"
            )));
        }
        let kv_dim = self.k.len();
        let new_len = (pos + 1).max(self.seq_len * 2).min(max);
        for c in self.key_cache.iter_mut().chain(self.value_cache.iter_mut()) {
            c.resize(new_len * kv_dim, 0.0);
        }
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

/// Source of embedding rows and lm_head rows (rank 0 holds no full table).
pub trait Head {
    /// Embedding row of `token` widened to f32.
    fn embed(&mut self, token: u32, out: &mut [f32]) -> Result<()>;
    /// This rank's lm_head rows `[my_vocab][dim]`.
    fn lm_head(&mut self) -> Result<Mat<'_>>;
}

/// All weights a rank reads: layer matrices, embedding rows and lm_head.
pub trait RankWeights: LayerSource + Head {}
impl<T: LayerSource + Head> RankWeights for T {}

/// Time spent in each phase of a forward, accumulated.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub comm: std::time::Duration,
}

/// One forward step for `token` at `pos`. Returns whether `state.logits`
/// holds the full logits on this rank (only when `want_logits`).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    res: &Resident,
    w: &mut dyn RankWeights,
    comm: &mut dyn Collective,
    par: &Par,
    s: &mut State,
    token: u32,
    pos: usize,
    want_logits: bool,
    timing: &mut Timing,
) -> Result<bool> {
    let d = &res.dims;
    s.grow_to(pos, d.max_seq_len.max(s.seq_len))?;
    let (hd, kv_dim) = (d.head_dim, d.kv_dim());
    w.embed(token, &mut s.x)?;
    for (i, f) in res.inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        s.cos[i] = angle.cos();
        s.sin[i] = angle.sin();
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let kernel = par.backend();

    for l in 0..d.n_layers {
        let vecs = &res.layers[l];
        let m = w.acquire(l)?;

        // attention: q,k,v = my heads of rmsnorm(x)
        tpi_kernels::rmsnorm(&mut s.xb[..d.dim], &s.x, &vecs.attn_norm, d.norm_eps);
        let xb = &s.xb[..d.dim];
        par.gemv3(
            (m.q.weights()?, xb, &mut s.q),
            (m.k.weights()?, xb, &mut s.k),
            (m.v.weights()?, xb, &mut s.v),
        );
        add_bias(&mut s.q, &vecs.q_bias);
        add_bias(&mut s.k, &vecs.k_bias);
        add_bias(&mut s.v, &vecs.v_bias);
        tpi_kernels::rope(&mut s.q, &s.cos, &s.sin);
        tpi_kernels::rope(&mut s.k, &s.cos, &s.sin);
        let (kc, vc) = (&mut s.key_cache[l], &mut s.value_cache[l]);
        kc[pos * kv_dim..(pos + 1) * kv_dim].copy_from_slice(&s.k);
        vc[pos * kv_dim..(pos + 1) * kv_dim].copy_from_slice(&s.v);

        // softmax(q k^T / sqrt(hd)) v, per query head, over positions 0..=pos
        for h in 0..d.n_heads {
            let kvh = (d.first_head + h) / d.kv_group - d.first_kv_head;
            let q = &s.q[h * hd..(h + 1) * hd];
            let att = &mut s.att[..=pos];
            for (t, a) in att.iter_mut().enumerate() {
                let k = &kc[t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd];
                *a = kernel.dot(q, k) * scale;
            }
            tpi_kernels::softmax(att);
            let out = &mut s.att_out[h * hd..(h + 1) * hd];
            out.fill(0.0);
            for (t, a) in att.iter().enumerate() {
                kernel.axpy(
                    out,
                    *a,
                    &vc[t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd],
                );
            }
        }
        par.gemv(m.o.weights()?, &s.att_out, &mut s.xb2);

        // MLP: silu(gate x) * (up x), then down; partial sums of my columns
        let (gate, up, down) = (m.gate.weights()?, m.up.weights()?, m.down.weights()?);
        let t0 = std::time::Instant::now();
        comm.allreduce_sum(&mut s.xb2, l, Op::Attention)?;
        timing.comm += t0.elapsed();
        add_into(&mut s.x, &s.xb2);
        tpi_kernels::rmsnorm(&mut s.xb[..d.dim], &s.x, &vecs.ffn_norm, d.norm_eps);
        let xb = &s.xb[..d.dim];
        par.gemv2((gate, xb, &mut s.hb), (up, xb, &mut s.hb2));
        tpi_kernels::silu_mul(&mut s.hb, &s.hb2);
        par.gemv(down, &s.hb, &mut s.xb2);
        w.release(l)?;
        let t0 = std::time::Instant::now();
        comm.allreduce_sum(&mut s.xb2, l, Op::Mlp)?;
        timing.comm += t0.elapsed();
        add_into(&mut s.x, &s.xb2);
    }

    if !want_logits {
        return Ok(false);
    }
    tpi_kernels::rmsnorm(&mut s.xb[..d.dim], &s.x, &res.final_norm, d.norm_eps);
    let lm = w.lm_head()?;
    par.gemv(lm.weights()?, &s.xb[..d.dim], &mut s.my_logits);
    let t0 = std::time::Instant::now();
    let full = comm.gather_logits(&s.my_logits, &mut s.logits)?;
    timing.comm += t0.elapsed();
    Ok(full)
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

/// The kernel backend's name, for reports.
pub fn kernel_name(b: Backend) -> &'static str {
    b.name()
}
