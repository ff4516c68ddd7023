//! `tpi-run`: see `tpi::cli`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = tpi::cli::Args::parse();
    match tpi::cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tpi-run: error: {e}");
            // Each error's text includes its cause's; print only causes
            // that add something.
            let mut shown = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let text = s.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
