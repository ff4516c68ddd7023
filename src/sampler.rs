//! Next-token choice: greedy, or temperature / top-k / top-p sampling with a
//! seeded generator (same seed, same text).

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (>= 1 = off).
    pub top_p: f32,
    pub seed: u64,
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: u64,
    /// (probability, id) candidates, reused across steps.
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        // splitmix64 of the seed, so that seeds 0, 1, 2 start far apart.
        let mut z = cfg.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Sampler {
            cfg,
            rng: (z ^ (z >> 31)) | 1,
            cand: Vec::new(),
        }
    }

    /// Uniform in [0, 1) from xorshift64*.
    fn uniform(&mut self) -> f32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        ((self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }

    /// Picks the next token id from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 || logits.len() <= 1 {
            return tpi_kernels::argmax(logits) as u32;
        }
        let inv_t = 1.0 / self.cfg.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.cand.clear();
        let mut sum = 0.0f64;
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l - max) * inv_t).exp();
            sum += p as f64;
            self.cand.push((p, i as u32));
        }
        let sum = sum as f32;
        // Cut candidates that cannot be in the top-p set before sorting
        // (llama2.c's trick): p < (1 - top_p) / (n - 1) of the mass.
        let (k, top_p) = (self.cfg.top_k, self.cfg.top_p);
        if top_p < 1.0 && k == 0 {
            let cutoff = (1.0 - top_p) / (logits.len() - 1) as f32 * sum;
            self.cand.retain(|c| c.0 >= cutoff);
        }
        self.cand
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if k > 0 && k < self.cand.len() {
            self.cand.truncate(k);
        }
        let kept: f32 = self.cand.iter().map(|c| c.0).sum();
        let mut n = self.cand.len();
        if top_p < 1.0 {
            let mut acc = 0.0;
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.0;
                if acc >= top_p * kept {
                    n = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.cand[..n].iter().map(|c| c.0).sum();
        let r = self.uniform() * total;
        let mut acc = 0.0;
        for c in &self.cand[..n] {
            acc += c.0;
            if r < acc {
                return c.1;
            }
        }
        self.cand[n - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_picks_the_argmax() {
        let mut s = Sampler::new(cfg(0.0, 0, 0.9, 1));
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_same_seed_repeats() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect();
        let mut s = Sampler::new(cfg(1.0, 1, 1.0, 7));
        for _ in 0..20 {
            assert_eq!(s.sample(&logits) as usize, tpi_kernels::argmax(&logits));
        }
        let draw = |seed| {
            let mut s = Sampler::new(cfg(1.0, 0, 0.95, seed));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p = [0.6, 0.3, 0.1]-ish: top_p 0.5 keeps only the first.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(cfg(1.0, 0, 0.5, 9));
        for _ in 0..200 {
            assert_eq!(s.sample(&logits), 0);
        }
        // top_p 0.85 keeps two; both appear, the third never.
        let mut s = Sampler::new(cfg(1.0, 0, 0.85, 9));
        let mut seen = [0; 3];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert!(seen[0] > 1000 && seen[1] > 300 && seen[2] == 0, "{seen:?}");
    }
}
