//! Records the target triple for `tpi-run --version`.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=TPI_TARGET={target}");
}
