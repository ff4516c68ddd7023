//! `tpi-run cache list|prune`: the slice cache's entries, and removing
//! those of models gone or changed, interrupted downloads and (with a size
//! cap) the least recently used.

use super::report::stdout_err;
use super::usage;
use crate::error::{Error, Result};
use crate::session::default_cache_dir;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `tpi-run cache ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CacheCommand {
    /// One line per cached (model, plan): size, last use, model and whether
    /// that model is still there unchanged.
    List(CacheDir),
    /// Remove slices of models that are gone or changed, interrupted
    /// downloads, and (with --max-size) the least recently used entries
    /// over the size.
    Prune {
        #[command(flatten)]
        dir: CacheDir,
        /// Keep the cache at most this large: bytes, or with a K/M/G/T
        /// suffix (powers of 1024), e.g. 20G.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
        /// Keep slices of models that are gone or changed.
        #[arg(long)]
        keep_orphans: bool,
    },
}

/// The cache a `tpi-run cache` command works on.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheDir {
    /// Default $TPI_CACHE_DIR, $XDG_CACHE_HOME/tpi or ~/.cache/tpi.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// One JSON object per entry, one per line.
    #[arg(long)]
    pub json: bool,
}

/// `"20G"` -> 20 GiB in bytes; plain numbers are bytes.
fn parse_size(flag: &'static str, s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(usage(flag, format!("unknown unit in '{s}'"))),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| usage(flag, format!("'{s}' is not a size")))?;
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(usage(flag, format!("'{s}' is out of range")));
    }
    Ok(bytes as u64)
}

/// `tpi-run cache list|prune`.
pub(super) fn run_cache(c: &CacheCommand) -> Result<()> {
    use crate::split::cache::{list, prune, CacheEntry, PrunePolicy};
    let (dir, removed) = match c {
        CacheCommand::List(d) => (d, None),
        CacheCommand::Prune {
            dir,
            max_size,
            keep_orphans,
        } => {
            let policy = PrunePolicy {
                remove_orphans: !keep_orphans,
                max_bytes: max_size
                    .as_deref()
                    .map(|s| parse_size("--max-size", s))
                    .transpose()?,
                ..PrunePolicy::default()
            };
            let cache_dir = dir.cache_dir.clone().unwrap_or_else(default_cache_dir);
            (
                dir,
                Some(prune(&cache_dir, &policy).map_err(cache_err(&cache_dir))?),
            )
        }
    };
    let cache_dir = dir.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let entries = match &removed {
        Some(r) => r.clone(),
        None => list(&cache_dir).map_err(cache_err(&cache_dir))?,
    };
    let verb = if removed.is_some() {
        "removed"
    } else {
        "cached"
    };
    let mut out = std::io::stdout().lock();
    let age = |e: &CacheEntry| {
        std::time::SystemTime::now()
            .duration_since(e.last_used)
            .map_or(0, |d| d.as_secs())
    };
    let mut text = String::new();
    for e in &entries {
        if dir.json {
            let v = serde_json::json!({
                "path": e.path,
                "fingerprint": format!("{:016x}", e.fingerprint),
                "plan_hash": format!("{:016x}", e.plan_hash),
                "bytes": e.bytes,
                "last_used_s_ago": age(e),
                "model": e.origin,
                "model_status": format!("{:?}", e.model).to_lowercase(),
                "removed": removed.is_some(),
            });
            text.push_str(&format!("{v}\n"));
        } else {
            text.push_str(&format!(
                "{:>10}  used {:>6} s ago  {:<9} {}  ({})\n",
                crate::progress::human_bytes(e.bytes as f64),
                age(e),
                format!("{:?}", e.model).to_lowercase(),
                e.origin.as_deref().unwrap_or("model not recorded"),
                e.path.display()
            ));
        }
    }
    if !dir.json {
        let total: u64 = entries.iter().map(|e| e.bytes).sum();
        text.push_str(&format!(
            "{} entries {verb}, {} in {}\n",
            entries.len(),
            crate::progress::human_bytes(total as f64),
            cache_dir.display()
        ));
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_err)
}

fn cache_err(dir: &Path) -> impl Fn(crate::split::cache::CacheError) -> Error + '_ {
    move |e| Error::Cache {
        dir: dir.display().to_string(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_junk() {
        assert_eq!(parse_size("f", "1024").unwrap(), 1024);
        assert_eq!(parse_size("f", "20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("f", "1.5MiB").unwrap(), 3 << 19);
        assert_eq!(parse_size("f", "0").unwrap(), 0);
        for bad in ["", "G", "-1G", "1X", "nanG", "1e30T", "inf"] {
            assert!(parse_size("--max-size", bad).is_err(), "{bad}");
        }
    }
}
