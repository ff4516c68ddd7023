//! `tpi-run chat` from the outside: lines on stdin are the user's
//! messages; each answer on stdout equals the command line's greedy
//! output for the conversation rendered by the library's chat template
//! (the earlier answers included), later turns reuse the KV cache of the
//! earlier ones, a cluster's workers stay alive while the user types, and
//! bad input is refused without ending the chat. Run alone with
//! `cargo test --test integration chat::`.

use crate::common::*;
use crate::serve::{chat_ids, chat_model, cli_greedy_ids};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

const LENGTH: usize = 10;

/// Runs `tpi-run chat ARGS`, writing `lines` to its stdin with `pause`
/// between them, and returns its output.
fn chat(args: &[&str], lines: &[&[u8]], pause: Duration) -> Output {
    let mut child = tpi_run()
        .arg("chat")
        .args(args)
        .args(["--temperature", "0", "--length", &LENGTH.to_string()])
        .args(["--threads", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tpi-run chat");
    let mut stdin = child.stdin.take().expect("stdin");
    for line in lines {
        // A chat that has already failed closes its stdin; the output says why.
        if stdin.write_all(line).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    drop(stdin);
    child.wait_with_output().expect("wait for tpi-run chat")
}

/// The `(prompt tokens, reused tokens)` of each answer's timing line.
fn turns(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("; prompt ").nth(1)?;
            let (prompt, rest) = rest.split_once(" tokens, ")?;
            let reused = rest.split_once(" of them reused")?.0;
            Some((prompt.parse().ok()?, reused.parse().ok()?))
        })
        .collect()
}

/// Each answer of a conversation as the command line generates it from
/// the rendered conversation so far.
fn expected_answers(model: &std::path::Path, users: &[&str]) -> Vec<String> {
    let mut messages = Vec::new();
    let mut answers = Vec::new();
    for u in users {
        messages.push(json!({"role": "user", "content": u}));
        let ids = chat_ids(model, None, &Value::Array(messages.clone()));
        let a = cli_greedy_ids(&model.display().to_string(), &ids, LENGTH);
        messages.push(json!({"role": "assistant", "content": a}));
        answers.push(a);
    }
    answers
}

fn check_conversation(world: usize, pause: Duration) {
    let tmp = TempDir::new("chat-cli");
    let model = chat_model(&tmp);
    let cache = tmp.path().join("cache");
    let users = ["Hello", "Tell me a story about a dog."];
    let mut want = expected_answers(&model, &users);
    want.extend(expected_answers(&model, &["Once upon a time"]));

    let (m, c, w) = (
        model.display().to_string(),
        cache.display().to_string(),
        world.to_string(),
    );
    let out = chat(
        &[
            "--model",
            &m,
            "--cache-dir",
            &c,
            "--world-size",
            &w,
            "--peer-timeout",
            "1",
        ],
        &[
            b"Hello\n",
            b"\n",
            b"Tell me a story about a dog.\r\n",
            b"/reset\n",
            b"Once upon a time\n",
            b"/exit\n",
        ],
        pause,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        text,
        format!("{}\n{}\n{}\n", want[0], want[1], want[2]),
        "{stderr}"
    );

    let t = turns(&stderr);
    assert_eq!(t.len(), 3, "{stderr}");
    eprintln!("world size {world}: (prompt, reused) per turn {t:?}");
    assert_eq!(t[0].1, 0, "the first turn has nothing to reuse");
    // The second turn starts with the first turn's prompt.
    assert!(t[1].1 >= t[0].0, "turn 2 reused {} of {}", t[1].1, t[0].0);
    // After /reset only the template's opening is shared.
    assert!(t[2].1 < t[0].0, "{t:?}");
}

#[test]
fn each_answer_is_the_command_lines_for_the_conversation_so_far() {
    check_conversation(1, Duration::ZERO);
}

#[test]
fn a_cluster_waits_for_the_user_past_the_peer_timeout() {
    // 1.5 s between lines against a 1 s peer timeout: rank 0 heartbeats
    // its worker while it waits for stdin.
    check_conversation(2, Duration::from_millis(1500));
}

#[test]
fn bad_lines_are_refused_and_the_chat_goes_on() {
    let tmp = TempDir::new("chat-bad");
    let model = chat_model(&tmp);
    let m = model.display().to_string();
    let mut long = vec![b'a'; (1 << 20) + 10];
    long.push(b'\n');
    let out = chat(
        &["--model", &m],
        &[b"\xff\xfe\n", &long, b"Hello\n"],
        Duration::ZERO,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    assert!(stderr.contains("at most 1048576 bytes"), "{stderr}");
    let want = expected_answers(&model, &["Hello"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", want[0])
    );
}

#[test]
fn a_model_without_a_template_is_a_usage_error() {
    let out = chat(
        &["--model", &fixture_dir("stories260K").display().to_string()],
        &[b"Hello\n"],
        Duration::ZERO,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chat needs a template"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_conversation_past_the_context_is_refused_until_reset() {
    let tmp = TempDir::new("chat-context");
    let model = chat_model(&tmp);
    let m = model.display().to_string();
    let long = format!("{}\n", "once upon a time ".repeat(200));
    let out = chat(
        &["--model", &m],
        &[long.as_bytes(), b"Hello\n"],
        Duration::ZERO,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("/reset starts a new one"), "{stderr}");
    // The refused message is not kept: the next answer is the first turn's.
    let want = expected_answers(&model, &["Hello"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", want[0])
    );
}
