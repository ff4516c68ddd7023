//! M6..M8 of [`super`]: a GGUF file's tensors mapped to tpi's roles,
//! shapes and weight types, and the Llama 3 `rope_freqs` divisors.

use super::*;

/// The role and layer a GGUF name stands for; `None` if none.
pub(super) fn role_of(name: &str) -> Option<(Role, Option<usize>)> {
    match name {
        TOKEN_EMBD => return Some((Role::Embedding, None)),
        OUTPUT => return Some((Role::LmHead, None)),
        OUTPUT_NORM => return Some((Role::FinalNorm, None)),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    // Leading zeros or a `+` parse to the same layer: M6 reports those as
    // duplicates rather than as unknown names.
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit() || b == b'+') {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    LAYER_LEAVES
        .iter()
        .find(|(l, _)| *l == leaf)
        .map(|&(_, role)| (role, Some(layer)))
}

/// M8: the weight type of a ggml type tpi computes with.
pub fn weight_type(t: GgmlType) -> Option<WeightType> {
    Some(match t {
        GgmlType::F32 => WeightType::F32,
        GgmlType::F16 => WeightType::F16,
        GgmlType::BF16 => WeightType::BF16,
        GgmlType::Q8_0 => WeightType::Q8_0,
        GgmlType::Q4_0 => WeightType::Q4_0,
        GgmlType::Q4_K => WeightType::Q4_K,
        GgmlType::Q6_K => WeightType::Q6_K,
        _ => return None,
    })
}

type Mapping = (Vec<Mapped>, Option<TensorInfo>);

/// M6..M8: every tensor of `gguf` given its role, checked against `cfg`.
pub fn map_tensors(gguf: &Gguf, cfg: &Config) -> Result<Mapping, GgufModelError> {
    let origin = gguf.file_name(0).to_string();
    let mut slots: Vec<Option<&TensorInfo>> = vec![None; 3 + cfg.n_layers * LAYER_LEAVES.len()];
    let slot = |role: Role, layer: Option<usize>| -> Option<usize> {
        match (role, layer) {
            (Role::Embedding, None) => Some(0),
            (Role::FinalNorm, None) => Some(1),
            (Role::LmHead, None) => Some(2),
            (_, Some(l)) if l < cfg.n_layers => LAYER_LEAVES
                .iter()
                .position(|(_, r)| *r == role)
                .map(|i| 3 + l * LAYER_LEAVES.len() + i),
            _ => None,
        }
    };
    let mut rope_freqs = None;
    for t in gguf.tensors() {
        if t.name == ROPE_FREQS {
            check_rope_freqs(t, cfg, &origin)?;
            rope_freqs = Some(t.clone());
            continue;
        }
        let i = role_of(&t.name)
            .and_then(|(role, layer)| slot(role, layer))
            .ok_or_else(|| GgufModelError::UnexpectedTensor {
                origin: origin.clone(),
                tensor: t.name.clone(),
            })?;
        let Some(s) = slots.get_mut(i) else {
            continue;
        };
        if let Some(first) = s {
            return Err(GgufModelError::DuplicateTensor {
                origin,
                first: first.name.clone(),
                second: t.name.clone(),
            });
        }
        *s = Some(t);
    }

    let has_bias = |l: usize| {
        [Role::QBias, Role::KBias, Role::VBias].map(|r| {
            slot(r, Some(l))
                .and_then(|i| slots.get(i).copied().flatten())
                .is_some()
        })
    };
    let mut out = Vec::with_capacity(slots.len());
    let mut push = |role: Role, layer: Option<usize>| -> Result<(), GgufModelError> {
        let info = slot(role, layer)
            .and_then(|i| slots.get(i).copied().flatten())
            .ok_or_else(|| GgufModelError::MissingTensor {
                origin: origin.clone(),
                tensor: gguf_name(role, layer),
            })?;
        out.push(check(info, role, layer, cfg, &origin)?);
        Ok(())
    };
    push(Role::Embedding, None)?;
    for l in 0..cfg.n_layers {
        for &(_, role) in &LAYER_LEAVES[..9] {
            push(role, Some(l))?;
        }
        // M6: biases all three or none (qwen2: all three).
        if cfg.attention_bias {
            for role in [Role::QBias, Role::KBias, Role::VBias] {
                push(role, Some(l))?;
            }
        } else if let Some(i) = has_bias(l).iter().position(|&b| b) {
            return Err(GgufModelError::UnexpectedTensor {
                origin,
                tensor: gguf_name([Role::QBias, Role::KBias, Role::VBias][i], Some(l)),
            });
        }
    }
    push(Role::FinalNorm, None)?;
    if !cfg.tie_embeddings {
        push(Role::LmHead, None)?;
    }
    Ok((out, rope_freqs))
}

/// The GGUF name of a role (for messages).
pub fn gguf_name(role: Role, layer: Option<usize>) -> String {
    match (role, layer) {
        (Role::Embedding, _) => TOKEN_EMBD.to_string(),
        (Role::LmHead, _) => OUTPUT.to_string(),
        (Role::FinalNorm, _) => OUTPUT_NORM.to_string(),
        (role, l) => {
            let leaf = LAYER_LEAVES
                .iter()
                .find(|(_, r)| *r == role)
                .map_or("?", |(leaf, _)| leaf);
            format!("blk.{}.{leaf}", l.unwrap_or(0))
        }
    }
}

/// M7, M8 for one tensor.
fn check(
    info: &TensorInfo,
    role: Role,
    layer: Option<usize>,
    cfg: &Config,
    origin: &str,
) -> Result<Mapped, GgufModelError> {
    let (rows, cols) = role.shape(cfg);
    let vector = role.is_vector();
    let want: Vec<u64> = if vector {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    };
    if info.dims != want {
        return Err(GgufModelError::Shape {
            origin: origin.to_string(),
            tensor: info.name.clone(),
            dims: info.dims.clone(),
            want,
        });
    }
    let wtype = weight_type(info.ggml_type)
        .filter(|w| !vector || w.float().is_some())
        .ok_or_else(|| GgufModelError::TensorType {
            origin: origin.to_string(),
            tensor: info.name.clone(),
            ggml_type: info.ggml_type,
        })?;
    let permutation = match (&cfg.arch, role) {
        (Arch::Llama, Role::Q | Role::QBias) => QkPermutation::new(cfg.n_heads, cfg.head_dim),
        (Arch::Llama, Role::K | Role::KBias) => QkPermutation::new(cfg.n_kv_heads, cfg.head_dim),
        _ => None,
    };
    Ok(Mapped {
        role,
        layer,
        info: info.clone(),
        wtype,
        rows,
        cols,
        permutation,
    })
}

/// M5, M7, M8 for `rope_freqs.weight`: F32 `[head_dim / 2]`.
fn check_rope_freqs(t: &TensorInfo, cfg: &Config, origin: &str) -> Result<(), GgufModelError> {
    let want = vec![(cfg.head_dim / 2) as u64];
    if t.dims != want {
        return Err(GgufModelError::Shape {
            origin: origin.to_string(),
            tensor: t.name.clone(),
            dims: t.dims.clone(),
            want,
        });
    }
    if t.ggml_type != GgmlType::F32 {
        return Err(GgufModelError::TensorType {
            origin: origin.to_string(),
            tensor: t.name.clone(),
            ggml_type: t.ggml_type,
        });
    }
    if cfg.rope_scaling != RopeScaling::None {
        return Err(GgufModelError::Unsupported {
            origin: origin.to_string(),
            what: format!("{ROPE_FREQS} together with {:?}", cfg.rope_scaling),
        });
    }
    Ok(())
}

/// RoPE inverse frequencies with llama3 divisors (M5): `cfg`'s base
/// frequencies, each divided by its `rope_freqs` value, as llama.cpp's
/// `ggml_rope_ext` uses them. `bytes` are the tensor's little-endian f32
/// data; `origin` names the file in errors.
pub fn rope_inv_freq(cfg: &Config, bytes: &[u8], origin: &str) -> Result<Vec<f32>, GgufModelError> {
    let base = cfg.rope_inv_freq();
    let err = |msg: String| GgufModelError::RopeFreqs {
        origin: origin.to_string(),
        msg,
    };
    if bytes.len() != base.len() * Dtype::F32.size() {
        return Err(err(format!(
            "{} bytes, expected {} f32 values",
            bytes.len(),
            base.len()
        )));
    }
    let factors = crate::model::dtype::widen(Dtype::F32, bytes);
    base.iter()
        .zip(&factors)
        .enumerate()
        .map(|(i, (f, d))| {
            let x = f / d;
            if d.is_finite() && *d > 0.0 && x.is_finite() && x > 0.0 {
                Ok(x)
            } else {
                Err(err(format!("value {i} is {d}, not a positive divisor")))
            }
        })
        .collect()
}
