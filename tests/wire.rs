//! `--wire-dtype f32|f16|q8_0` end to end: real `tpi-run` processes (local
//! mode, or separately started ranks) and a fake worker speaking the
//! protocol through the library. Greedy ids against the f32 wire, the
//! bytes every rank's socket carries, the handshake's agreement, malformed
//! and unsendable payloads.

use crate::common::*;
use crate::faults::{finish, rank0, run_pair, worker};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const DTYPES: [&str; 3] = ["f32", "f16", "q8_0"];

/// Local mode: rank 0 of `n` for `prompt`, greedy, `--json`; returns the
/// json and the logits at the last prompt position.
fn run(
    name: &str,
    prompt: &[u32],
    n: usize,
    wire: &str,
    len: usize,
    tmp: &Path,
) -> (Value, Vec<f32>) {
    let logits = tmp.join(format!("logits-{n}-{wire}.json"));
    let out = tpi_run()
        .arg("--model")
        .arg(fixture_dir(name))
        .args([
            "--prompt-ids",
            &ids_arg(prompt),
            "--length",
            &len.to_string(),
        ])
        .args(["--temperature", "0", "--ignore-eos", "--json", "--quiet"])
        .args(["--world-size", &n.to_string(), "--threads", "1"])
        .args(["--wire-dtype", wire])
        .arg("--cache-dir")
        .arg(tmp.join("cache"))
        .arg("--logits-out")
        .arg(&logits)
        .output()
        .expect("spawn tpi-run");
    assert!(
        out.status.success(),
        "{name} N={n} {wire}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["wire_dtype"], wire, "{name} N={n}");
    let l = serde_json::from_str(&std::fs::read_to_string(&logits).expect("logits"))
        .expect("logits json");
    (v, l)
}

/// `mse(a, b) / mse(b, 0)`.
fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let e: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let s: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    e / s
}

/// q8_0 rounds each partial and the sum to 8 bits per value: the logits at
/// the last prompt position stay within this of the f32 wire's. Measured
/// over the 3 fixtures x 3 prompts x world sizes 2 and 3 (release build,
/// x86-64): max |diff| 0.133, NMSE 5.8e-4; bounds at about twice that.
const Q8_0_MAX_ABS_DIFF: f32 = 0.25;
const Q8_0_MAX_NMSE: f64 = 1.5e-3;

/// f16 keeps every greedy id of the f32 wire (measured on every fixture
/// and prompt at world sizes 2 and 3; logits within 5e-3). q8_0 moves some
/// ids on these random-weight fixtures, whose top logits lie close (on
/// llama-mha-f32 at world size 2 the first change is at token 15 of 32):
/// it is held to a logits tolerance instead, and to the first id wherever
/// the f32 wire's top-2 gap exceeds twice that tolerance (no rounding
/// within it can swap them).
#[test]
fn f16_keeps_greedy_ids_and_q8_0_keeps_logits_within_tolerance_at_world_sizes_2_and_3() {
    for name in FIXTURES {
        let r = reference(name);
        let p = &r["prompts"][0];
        let prompt = ids(&p["ids"]);
        let tmp = TempDir::new("wire-ids");
        for n in [2, 3] {
            let (v32, l32) = run(name, &prompt, n, "f32", 32, tmp.path());
            assert_eq!(
                ids(&v32["generated_ids"]),
                ids(&p["greedy"]["ids"]),
                "{name} N={n} f32"
            );
            let (v16, l16) = run(name, &prompt, n, "f16", 32, tmp.path());
            assert_eq!(
                ids(&v16["generated_ids"]),
                ids(&v32["generated_ids"]),
                "{name} N={n} f16 ids"
            );
            let (d16, _) = max_abs_diff(&l16, &l32);
            assert!(d16 <= 1e-2, "{name} N={n} f16 logits differ by {d16}");
            let (v8, l8) = run(name, &prompt, n, "q8_0", 32, tmp.path());
            let (d8, at) = max_abs_diff(&l8, &l32);
            let e = nmse(&l8, &l32);
            eprintln!("{name} N={n}: f16 max |diff| {d16:.2e}; q8_0 max |diff| {d8:.2e} (id {at}), NMSE {e:.1e}");
            assert!(
                d8 <= Q8_0_MAX_ABS_DIFF,
                "{name} N={n} q8_0 logits differ by {d8} at id {at}"
            );
            assert!(e <= Q8_0_MAX_NMSE, "{name} N={n} q8_0 logits NMSE {e}");
            let mut sorted = l32.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 2.0 * Q8_0_MAX_ABS_DIFF {
                assert_eq!(
                    ids(&v8["generated_ids"])[0],
                    ids(&v32["generated_ids"])[0],
                    "{name} N={n} q8_0 first id"
                );
            }
        }
    }
}

/// Encoded bytes of `n` allreduce values (spec W2).
fn payload(wire: &str, n: u64) -> u64 {
    match wire {
        "f32" => 4 * n,
        "f16" => 2 * n,
        "q8_0" => 34 * n.div_ceil(32),
        w => panic!("{w}"),
    }
}

/// Every byte through each worker's socket during generation, counted by
/// rank 0's links, is the protocol's: per forward of `t` tokens, a Step
/// (40-byte header + 12 + 4t), 2 x n_layers Partial and Reduced messages of
/// 40 + payload(dim * t) bytes each (one frame here), the worker's Logits
/// (40 + 4 x its vocab rows) and a final Stop (40). Per decode token and
/// rank the allreduces are 2 x n_layers x (40 + 4 dim | 2 dim | 34 dim / 32).
#[test]
fn bytes_on_the_wire_per_token_per_rank_are_the_encoded_lengths() {
    let name = "llama-mha-f32";
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir(name).join("config.json")).expect("config"),
    )
    .expect("config json");
    let dim = cfg["hidden_size"].as_u64().expect("dim");
    let n_layers = cfg["num_hidden_layers"].as_u64().expect("layers");
    let (prompt, len) = ([1u32, 5, 9, 13, 17], 9u64);
    let tmp = TempDir::new("wire-bytes");
    for n in [2usize, 3] {
        let plan = tpi_run()
            .arg("--model")
            .arg(fixture_dir(name))
            .args(["--world-size", &n.to_string(), "--dry-run", "--json"])
            .output()
            .expect("dry run");
        let plan: Value = serde_json::from_slice(&plan.stdout).expect("plan json");
        for wire in DTYPES {
            let (v, _) = run(name, &prompt, n, wire, len as usize, tmp.path());
            // One prefill forward of the prompt, then one per generated
            // token but the last; each wants logits.
            let t0 = prompt.len() as u64;
            let forwards: Vec<u64> = std::iter::once(t0).chain((1..len).map(|_| 1)).collect();
            let allreduce = |t: u64| 2 * n_layers * (40 + payload(wire, dim * t));
            let links = v["link_bytes"].as_array().expect("link_bytes");
            assert_eq!(links.len(), n - 1, "N={n} {wire}");
            for l in links {
                let r = l["rank"].as_u64().expect("rank") as usize;
                let vocab = &plan["ranks"][r]["vocab"];
                let rows =
                    vocab[1].as_u64().expect("vocab end") - vocab[0].as_u64().expect("start");
                let sent: u64 = forwards
                    .iter()
                    .map(|&t| 40 + 12 + 4 * t + allreduce(t))
                    .sum::<u64>()
                    + 40;
                let received: u64 = forwards.iter().map(|&t| allreduce(t) + 40 + 4 * rows).sum();
                assert_eq!(l["sent"].as_u64(), Some(sent), "N={n} {wire} rank {r} sent");
                assert_eq!(
                    l["received"].as_u64(),
                    Some(received),
                    "N={n} {wire} rank {r} received"
                );
            }
            let per_token = allreduce(1);
            eprintln!(
                "N={n} {wire}: {per_token} allreduce bytes per decode token per rank and direction"
            );
        }
    }
    // The ratios the flag is for, at this dim (64): 4 : 2 : 1.0625 bytes per value.
    assert_eq!(
        [payload("f32", 64), payload("f16", 64), payload("q8_0", 64)],
        [256, 128, 68]
    );
}

#[test]
fn wire_dtype_is_rank0s_and_a_worker_started_with_another_is_refused_naming_both() {
    let tmp = TempDir::new("wire-skew");
    let prompt = [
        "--prompt-ids",
        "1,2,3",
        "--length",
        "4",
        "--join-timeout",
        "3",
    ];
    let pair = |hub_wire: &str, worker_wire: &[&str], cache: &str| {
        let port = free_port();
        let hub = rank0(
            port,
            2,
            &tmp.path().join("c0"),
            &[&prompt[..], &["--wire-dtype", hub_wire]].concat(),
        );
        let w = worker(
            port,
            1,
            2,
            &tmp.path().join(cache),
            &[&["--join-timeout", "3"][..], worker_wire].concat(),
        );
        run_pair(hub, w)
    };
    let ((hc, herr), (wc, werr)) = pair("f16", &["--wire-dtype", "q8_0"], "c1");
    assert_eq!(
        (hc, wc),
        (Some(1), Some(1)),
        "rank 0: {herr}\nworker: {werr}"
    );
    for err in [&werr, &herr] {
        assert!(
            err.contains("wire dtype: rank 0 uses f16, rank 1 was started with q8_0"),
            "both values named: {err}"
        );
    }
    // The same type on both sides, or none on the worker's: it joins.
    for (worker_wire, cache) in [(&["--wire-dtype", "q8_0"][..], "c2"), (&[][..], "c3")] {
        let ((hc, herr), (wc, werr)) = pair("q8_0", worker_wire, cache);
        assert_eq!(
            (hc, wc),
            (Some(0), Some(0)),
            "rank 0: {herr}\nworker: {werr}"
        );
        assert!(werr.contains("allreduce payloads travel as q8_0"), "{werr}");
    }
}

/// Rank 1 of a world of 2 on `port` (the library's worker, no model) that
/// answers the first step's first allreduce with `payload` as its Partial.
fn fake_worker(port: u16, payload: Vec<u8>) -> std::thread::JoinHandle<()> {
    use tpi::net::frame::Kind;
    use tpi::net::{worker_join, worker_ready, Command, NetOpts, WireDtype, WorkerComm};
    std::thread::spawn(move || {
        let opts = NetOpts {
            join_timeout: Duration::from_secs(15),
            ..NetOpts::default()
        };
        let master = format!("127.0.0.1:{port}");
        let (mut link, _) = worker_join(&master, 1, 2, None, None, opts).expect("join");
        assert_eq!(
            link.wire(),
            WireDtype::Q8_0,
            "rank 0's choice, no flag here"
        );
        worker_ready(&mut link, opts.peer_timeout).expect("ready");
        let mut comm = WorkerComm::new(link, opts.peer_timeout, Duration::ZERO).expect("comm");
        let Ok(Command::Step { .. }) = comm.next_command() else {
            panic!("expected the first step");
        };
        // Step 1, seq 0: the Partial of layer 0 attention.
        comm.link
            .send(Kind::Partial, 1, 0, &payload)
            .expect("send partial");
        let _ = comm.next_command(); // rank 0's Error, or its close
    })
}

#[test]
fn malformed_q8_0_partial_is_refused_by_rank0_naming_peer_step_and_message() {
    use tpi::net::wire::{encode, WireDtype};
    // stories260K (bundled): dim 64, a one-token prompt: 2 blocks, 68 bytes.
    let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.3).sin()).collect();
    let mut good = Vec::new();
    encode(WireDtype::Q8_0, &x, &mut good).expect("encode");
    let mut nan_scale = good.clone();
    nan_scale[34..36].copy_from_slice(&0x7e00u16.to_le_bytes());
    let mut big_quant = good.clone();
    big_quant[2 + 4] = 0x80;
    let cases = [
        (nan_scale, "q8_0 block 1: scale NaN"),
        (big_quant, "q8_0 block 0: quant 4 is -128"),
        (good[..67].to_vec(), "message of 67 bytes, expected 68"),
    ];
    for (payload, want) in cases {
        let tmp = TempDir::new("wire-bad");
        let port = free_port();
        let hub = rank0(
            port,
            2,
            &tmp.path().join("c0"),
            &[
                "--prompt-ids",
                "1",
                "--length",
                "4",
                "--join-timeout",
                "15",
                "--wire-dtype",
                "q8_0",
            ],
        )
        .spawn()
        .expect("rank 0");
        let w = fake_worker(port, payload);
        let (code, err, _) = finish(hub, Duration::from_secs(20));
        w.join().expect("fake worker");
        assert_eq!(code, Some(1), "rank 0: {err}");
        assert!(
            err.contains("rank 1 at 127.0.0.1")
                && err.contains("step 1")
                && err.contains("Partial of layer 0 attention")
                && err.contains(want),
            "rank 0 should name the peer, step, message and fault ({want}): {err}"
        );
    }
}

/// Copies llama-mha-f32 with layer 1's down_proj all NaN.
fn poisoned(dst: &Path) {
    let src = fixture_dir("llama-mha-f32");
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).expect("copy");
    }
    let mut bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let off = &header["model.layers.1.mlp.down_proj.weight"]["data_offsets"];
    let (a, b) = (
        off[0].as_u64().expect("a") as usize,
        off[1].as_u64().expect("b") as usize,
    );
    for w in bytes[8 + n + a..8 + n + b].chunks_exact_mut(4) {
        w.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(dst.join("model.safetensors"), bytes).expect("write");
}

/// A NaN partial is the engine's non-finite error naming the layer and the
/// position on every wire: f16 carries the NaN (as f32 does) to every
/// rank's check of the layer's output; q8_0 cannot, so the rank holding it
/// stops before sending (spec W6) with the same error.
#[test]
fn nan_partial_is_the_non_finite_error_on_every_wire() {
    let model = TempDir::new("wire-nan-model");
    let cache = TempDir::new("wire-nan-cache");
    poisoned(model.path());
    for wire in DTYPES {
        for n in [2, 3] {
            let out: Output = Command::new(env!("CARGO_BIN_EXE_tpi-run"))
                .arg("--model")
                .arg(model.path())
                .arg("--cache-dir")
                .arg(cache.path())
                .args([
                    "--world-size",
                    &n.to_string(),
                    "--threads",
                    "1",
                    "--wire-dtype",
                    wire,
                ])
                .args([
                    "--prompt-ids",
                    "1,2,3",
                    "--length",
                    "4",
                    "--temperature",
                    "0",
                    "--json",
                ])
                .output()
                .expect("spawn tpi-run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{wire} N={n}: {err}");
            assert!(out.stdout.is_empty(), "{wire} N={n}: printed output");
            let line = err
                .lines()
                .find(|l| l.starts_with("tpi-run: error:"))
                .unwrap_or_else(|| panic!("no error line: {err}"));
            assert!(
                line.contains("non-finite")
                    && line.contains("the output of layer 1")
                    && line.contains("at position 0"),
                "{wire} N={n}: {line}"
            );
        }
    }
}
