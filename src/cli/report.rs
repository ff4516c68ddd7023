//! What `tpi-run` prints on stdout: the streamed text (by the caller), the
//! `--json` object or the one-line summary, the `--dry-run` plan, the
//! `--logits-out` file. A closed or full stdout is an error, not a panic.

use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::model::role::Role;
use crate::session::HubReport;
use crate::split::types::token_bytes;
use crate::split::writer::rank_classes;
use crate::sys::peak_rss_bytes;
use std::io::Write;
use std::path::Path;
use tpi_kernels::Backend;

pub(super) fn stdout_err(source: std::io::Error) -> Error {
    Error::Io {
        path: "stdout".into(),
        source,
    }
}

pub(super) fn write_logits(file: std::fs::File, path: &Path, logits: &[f32]) -> Result<()> {
    let io = |source| Error::Io {
        path: format!("--logits-out {}", path.display()),
        source,
    };
    let mut w = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut w, logits).map_err(|e| io(e.into()))?;
    w.flush().map_err(io)
}

/// `--dry-run`: the model and its split plan, as a table or one JSON object.
pub(super) fn print_dry_run(
    ckpt: &Checkpoint,
    plan: &crate::split::plan::Plan,
    json: bool,
) -> Result<()> {
    let cfg = &ckpt.config;
    let dtype = ckpt.weights.matrix(cfg, Role::Embedding, 0)?.wtype;
    let mut out = std::io::stdout().lock();
    let classes = (0..plan.world_size)
        .map(|r| rank_classes(ckpt, plan, r))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bytes: Vec<u64> = classes.iter().map(|c| token_bytes(plan, c)).collect();
    let text = if json {
        let range = |r: &std::ops::Range<usize>| serde_json::json!([r.start, r.end]);
        let ranks: Vec<_> = plan
            .ranks
            .iter()
            .zip(&bytes)
            .zip(&classes)
            .map(|((r, b), c)| {
                let tensors: Vec<_> = c
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "tensor": m.name,
                            "type": m.wtype.name(),
                            "rows": m.rows,
                            "cols": m.cols,
                            "count": m.count,
                            "bytes": m.bytes(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "rank": r.rank,
                    "weight": plan.weights.get(r.rank).copied().unwrap_or(1),
                    "heads": range(&r.heads),
                    "kv_heads": range(&r.kv_heads),
                    "hidden": range(&r.hidden),
                    "vocab": range(&r.vocab),
                    "weight_bytes": b,
                    "bytes_read_per_token": b,
                    "tensors": tensors,
                })
            })
            .collect();
        let v = serde_json::json!({
            "model": ckpt.origin,
            "n_layers": cfg.n_layers,
            "dim": cfg.dim,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads,
            "hidden_dim": cfg.hidden_dim,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_seq_len,
            "dtype": dtype.name(),
            "quantize": plan.quant.filter(|_| !ckpt.weights.is_gguf()).map(|q| q.name()),
            "world_size": plan.world_size,
            "plan_hash": format!("{:016x}", plan.hash()),
            "ranks": ranks,
        });
        format!("{v}\n")
    } else {
        let types = classes.first().map_or(String::new(), |c| {
            c.iter()
                .map(|m| format!("{} {}", m.name, m.wtype.name()))
                .collect::<Vec<_>>()
                .join(", ")
        });
        format!(
            "model {} ({} layers, dim {}, {} heads / {} KV heads, {} MLP, vocab {}, {})\nrank 0 stores: {types} (bytes: weights each rank reads per token)\n{}\n",
            ckpt.origin,
            cfg.n_layers,
            cfg.dim,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.hidden_dim,
            cfg.vocab_size,
            dtype.name(),
            plan.display_with_bytes(bytes)
        )
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_err)
}

pub(super) fn print_report(
    r: &HubReport,
    backend: Backend,
    threads: usize,
    world_size: usize,
    json: bool,
) -> Result<()> {
    let out = &r.out;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let rss = peak_rss_bytes().unwrap_or(0);
    let per_step = |b: u64| {
        if r.steps > 0 {
            b as f64 / r.steps as f64
        } else {
            0.0
        }
    };
    if json {
        let v = serde_json::json!({
            "prompt_ids": out.prompt_ids,
            "generated_ids": out.generated_ids,
            "text": out.text,
            "ttft_ms": ms(out.ttft),
            "ms_per_token": ms(out.per_token),
            "tokens_per_s": out.tokens_per_s(),
            "peak_rss_bytes": rss,
            "kernel": backend.name(),
            "threads": threads,
            "world_size": world_size,
            "compute_ms_per_token": ms(out.per_token.saturating_sub(out.comm_per_token)),
            "allreduce_ms_per_token": ms(out.comm_per_token),
            "bytes_sent_per_token": per_step(r.bytes_sent),
            "bytes_received_per_token": per_step(r.bytes_received),
            "wire_dtype": r.wire.name(),
            "link_bytes": r.links.iter().map(|l| serde_json::json!({
                "rank": l.rank,
                "sent": l.sent,
                "received": l.received,
            })).collect::<Vec<_>>(),
            "io_wait_ms_per_token": r.window.as_ref().map_or(0.0, |w| w.io_wait.as_secs_f64() * 1e3 / r.steps.max(1) as f64),
            "io_busy_ms_per_token": r.window.as_ref().map_or(0.0, |w| w.io_busy.as_secs_f64() * 1e3 / r.steps.max(1) as f64),
            "bytes_read_per_token": r.window.as_ref().map_or(0.0, |w| per_step(w.bytes_read)),
            "memory_window": r.window.as_ref().map_or(serde_json::Value::Null, |w| serde_json::json!(w.n_slots)),
            "direct_io": r.window.as_ref().is_some_and(|w| w.direct),
            "mapped_io": r.window.as_ref().is_some_and(|w| w.mapped),
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{v}")
            .and_then(|()| stdout.flush())
            .map_err(stdout_err)?;
    } else {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout)
            .and_then(|()| stdout.flush())
            .map_err(stdout_err)?;
        // The summary is a courtesy: a closed stderr does not fail the run.
        let _ = writeln!(
            std::io::stderr(),
            "[tpi] {} tokens, TTFT {:.1} ms, {:.2} ms/token ({:.2} waiting on other ranks), {:.1} tokens/s, peak RSS {:.1} MiB, kernel {}, {} threads x {} ranks{}",
            out.generated_ids.len(),
            ms(out.ttft),
            ms(out.per_token),
            ms(out.comm_per_token),
            out.tokens_per_s(),
            rss as f64 / (1024.0 * 1024.0),
            backend.name(),
            threads,
            world_size,
            if world_size > 1 {
                format!(
                    ", {} wire, {:.0} B/token sent",
                    r.wire,
                    per_step(r.bytes_sent)
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
