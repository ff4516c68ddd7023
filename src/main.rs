//! `tpi-run`: see `tpi::cli`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = tpi::cli::Args::parse();
    match tpi::cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tpi-run: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
