//! `tpi-run serve` as real clients see it: the official `openai` Python
//! client (tools/openai_client_check.py) at world sizes 1 and 3, and the
//! chat page in headless Chromium (tools/chat_page_check.py). Each needs
//! a Python with `openai` (and `websocket-client` for the page): the one
//! in `TPI_PYTHON`, else `target/ci-venv` (.ci/run makes it), else
//! `python3`. Without one the client test says so and passes; the page
//! test is `#[ignore]`d (it also needs Chromium) and run by .ci/run.

use crate::common::*;
use crate::serve::{chat_ids, chat_model, cli_greedy_ids, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Python that imports every module of `modules`.
fn python_with(modules: &str) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python");
    let candidates = [
        std::env::var_os("TPI_PYTHON").map(PathBuf::from),
        Some(venv),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(name)
}

#[test]
fn the_openai_python_client_gets_the_command_line_answer_at_world_sizes_1_and_3() {
    let Some(py) = python_with("openai") else {
        eprintln!("skipped: no Python with `openai` (set TPI_PYTHON or run .ci/run)");
        return;
    };
    let tmp = TempDir::new("serve-openai");
    let model = chat_model(&tmp);
    let model_arg = model.display().to_string();
    let messages = json!([{"role": "system", "content": "You tell stories."},
                          {"role": "user", "content": "A story about a dog, please."}]);
    let expected = cli_greedy_ids(&model_arg, &chat_ids(&model, None, &messages), 24);
    for n in ["1", "3"] {
        let server = Server::start(&["--model", &model_arg, "--world-size", n]);
        let out = Command::new(&py)
            .arg(tool("openai_client_check.py"))
            .arg(format!("http://127.0.0.1:{}/v1", server.port))
            .arg("stories-chat")
            .arg(messages.to_string())
            .arg("24")
            .arg(Value::String(expected.clone()).to_string())
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "world size {n}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "world size {n}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

#[test]
#[ignore = "needs Chromium and a Python with websocket-client; .ci/run runs it"]
fn the_chat_page_in_chromium_streams_the_api_answer() {
    let py = python_with("websocket").expect("a Python with websocket-client (TPI_PYTHON)");
    let tmp = TempDir::new("serve-page");
    let model = chat_model(&tmp);
    let server = Server::start(&["--model", &model.display().to_string()]);
    let message = "Tell me about the big red ball.";
    let (s, v) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": message}],
                "temperature": 0, "max_tokens": 40}),
    );
    assert_eq!(s, 200, "{v}");
    let expected = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("answer");
    let out = Command::new(&py)
        .arg(tool("chat_page_check.py"))
        .arg(format!(
            "http://127.0.0.1:{}/?temperature=0&max_tokens=40",
            server.port
        ))
        .arg(message)
        .arg(Value::String(expected.to_string()).to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}
