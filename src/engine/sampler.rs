//! Next-token choice: greedy, or temperature / top-k / top-p sampling with a
//! seeded generator (same seed, same text).
//!
//! Total for every input: any temperature, top-k, top-p (negative, zero,
//! huge, NaN, infinite) and any logits (empty, NaN, infinite) give an id
//! below `logits.len()` (0 for no logits) without panicking. Settings
//! outside the meaningful range act as their nearest meaningful value
//! (`temperature <= 0` or not finite is greedy, `top_p` outside (0, 1] is
//! clamped, NaN `top_p` is off); the command line rejects such values
//! before they get here. Non-finite logits are the engine's error to
//! report (it names the step); here they are never picked.

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

/// Index of the largest finite value (the first on ties); 0 when there is none.
pub fn argmax_finite(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_finite() && (!found || v > best_v) {
            (best, best_v, found) = (i, v, true);
        }
    }
    best
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
        let greedy = argmax_finite(logits);
        let t = self.cfg.temperature;
        if !(t > 0.0 && t.is_finite()) || logits.len() <= 1 {
            return greedy as u32;
        }
        let Some(&max) = logits.get(greedy).filter(|m| m.is_finite()) else {
            return greedy as u32;
        };
        // p_i = exp((l_i - max) / T) in [0, 1], exactly 1 at the argmax;
        // dividing (not multiplying by 1/T) keeps a tiny T from making
        // 0 * inf = NaN at the maximum. Non-finite logits get p = 0.
        self.cand.clear();
        let mut sum = 0.0f64;
        for (i, &l) in logits.iter().enumerate() {
            let z = (l - max) / t;
            let p = if l.is_finite() && z <= 0.0 {
                z.exp()
            } else {
                0.0
            };
            sum += p as f64;
            self.cand.push((p, i as u32));
        }
        let sum = sum as f32;
        let k = self.cfg.top_k;
        let top_p = if self.cfg.top_p.is_nan() {
            1.0
        } else {
            self.cfg.top_p.clamp(0.0, 1.0)
        };
        // Cut candidates that cannot be in the top-p set before sorting
        // (llama2.c's trick): p < (1 - top_p) / (n - 1) of the mass. The
        // argmax always stays, so the set is never empty.
        if top_p < 1.0 && k == 0 {
            let cutoff = (1.0 - top_p) / (logits.len() - 1) as f32 * sum;
            self.cand
                .retain(|c| c.0 >= cutoff || c.1 as usize == greedy);
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
        let u = self.uniform();
        let Some(nucleus) = self.cand.get(..n).filter(|s| !s.is_empty()) else {
            return greedy as u32;
        };
        let total: f32 = nucleus.iter().map(|c| c.0).sum();
        if !(total > 0.0 && total.is_finite()) {
            return nucleus[0].1;
        }
        let r = u * total;
        let mut acc = 0.0;
        for c in nucleus {
            acc += c.0;
            if r < acc {
                return c.1;
            }
        }
        nucleus[nucleus.len() - 1].1
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

    #[test]
    fn tiny_temperature_is_greedy_not_a_panic() {
        // 1/T overflows to inf; every probability but the argmax's underflows.
        let logits: Vec<f32> = (0..512).map(|i| ((i * 7919) % 512) as f32 * 0.01).collect();
        let want = tpi_kernels::argmax(&logits) as u32;
        for t in [f32::MIN_POSITIVE, 1e-45, 1e-30, 1e-10] {
            for (k, p) in [(0, 0.9), (0, 1e-9), (40, 0.9), (1, 1.0)] {
                let mut s = Sampler::new(cfg(t, k, p, 5));
                assert_eq!(s.sample(&logits), want, "T={t} k={k} p={p}");
            }
        }
    }

    #[test]
    fn uniform_logits_with_tiny_top_p_keep_a_candidate() {
        // The pre-sort cutoff used to drop every candidate here.
        let mut s = Sampler::new(cfg(1.0, 0, 1e-6, 3));
        assert!(s.sample(&[0.5; 1000]) < 1000);
    }

    #[test]
    fn non_finite_logits_are_never_picked() {
        let logits = [f32::NAN, 1.0, f32::INFINITY, 2.0, f32::NEG_INFINITY];
        assert_eq!(argmax_finite(&logits), 3);
        let mut s = Sampler::new(cfg(5.0, 0, 1.0, 11));
        for _ in 0..500 {
            let id = s.sample(&logits);
            assert!(id == 1 || id == 3, "{id}");
        }
        assert_eq!(Sampler::new(cfg(1.0, 0, 0.9, 1)).sample(&[]), 0);
        assert_eq!(Sampler::new(cfg(1.0, 0, 0.9, 1)).sample(&[f32::NAN; 4]), 0);
    }

    fn any_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<u32>().prop_map(f32::from_bits),
            Just(0.0f32),
            Just(-0.0f32),
            Just(f32::MIN_POSITIVE),
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(f32::MAX),
            -2.0f32..2.0,
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_settings_and_logits_give_an_id_in_range(
            t in any_f32(),
            k in prop_oneof![Just(0usize), 1usize..8, Just(usize::MAX)],
            p in any_f32(),
            seed in any::<u64>(),
            logits in proptest::collection::vec(any_f32(), 0..64),
        ) {
            let mut s = Sampler::new(cfg(t, k, p, seed));
            for _ in 0..3 {
                let id = s.sample(&logits) as usize;
                prop_assert!(id < logits.len().max(1));
                if logits.iter().any(|l| l.is_finite()) {
                    prop_assert!(logits[id].is_finite(), "picked {} at {id}", logits[id]);
                }
            }
        }
    }
}
