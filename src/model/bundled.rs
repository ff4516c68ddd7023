//! The demo model built into the binary: TinyStories 260K (Karpathy's
//! llama2.c, MIT licence), so `tpi-run --prompt ...` runs with no download.

pub const CONFIG: &str = include_str!("../../tests/fixtures/stories260K/config.json");
pub const GENERATION_CONFIG: &str =
    include_str!("../../tests/fixtures/stories260K/generation_config.json");
pub const TOKENIZER: &[u8] = include_bytes!("../../tests/fixtures/stories260K/tokenizer.json");
pub const WEIGHTS: &[u8] = include_bytes!("../../tests/fixtures/stories260K/model.safetensors");
/// Shown where a path would be.
pub const NAME: &str = "<bundled stories260K>";
