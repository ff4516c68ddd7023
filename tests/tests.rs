//! tpi's integration tests: one binary, one module per area.

mod chat;
mod chat_template;
mod cli;
mod common;
mod faults;
mod fuzz_corpus;
mod gguf;
mod gguf_model;
mod gguf_run;
mod gguf_vocab;
mod join;
mod layers;
mod limits;
mod llamacpp;
mod oracle;
mod quant;
mod serve;
mod serve_clients;
mod slice_cache;
mod tp;
mod turns;
mod window;
mod wire;
