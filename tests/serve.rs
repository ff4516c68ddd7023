//! `tpi-run serve` from the outside, over raw TCP: the API answers as the
//! command line generates (greedy text equal to `tpi-run --json`, at world
//! sizes 1 and 3), streams the same text it returns whole, refuses bad
//! requests with OpenAI-shaped errors and the right status, stays up
//! under floods, slow clients and 50 clients at once, and stops a
//! generation whose client went away. Run alone with
//! `cargo test --test integration serve`.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `tpi-run serve`, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    _cache: TempDir,
}

impl Server {
    /// Starts `tpi-run serve` with `args` on a free port and waits until
    /// `/health` answers.
    pub fn start(args: &[&str]) -> Server {
        let cache = TempDir::new("serve");
        let port = free_port();
        let child = tpi_run()
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--cache-dir", &cache.path().display().to_string()])
            .args(["--threads", "1", "--quiet"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tpi-run serve");
        let mut server = Server {
            child,
            port,
            _cache: cache,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("tpi-run serve exited early: {status}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && server.get("/health").0 == 200 {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "server did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        s
    }

    /// One request on a new connection (`Connection: close`): status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> (u16, String) {
        let mut s = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        // A server refusing early may stop reading: later writes may fail.
        let _ = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(body));
        read_response(&mut s)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, &[], body.to_string().as_bytes());
        (status, parse(&text))
    }

    pub fn health(&self) -> Value {
        parse(&self.get("/health").1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Reads a response to its end (the server closes): status and body.
pub fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The JSON of each `data:` event of a stream body, up to `[DONE]`.
pub fn events(body: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let Some(data) = block.strip_prefix("data: ") else {
            continue;
        };
        for part in data.split("\n\ndata: ") {
            if part == "[DONE]" {
                return out;
            }
            out.push(parse(part));
        }
    }
    panic!("stream without [DONE]: {body}");
}

/// The text of a stream's chunks (chat deltas or completion text).
pub fn streamed_text(body: &str) -> String {
    events(body)
        .iter()
        .filter_map(|e| e["choices"].get(0))
        .map(|c| {
            c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn stories() -> String {
    fixture_dir("stories260K").display().to_string()
}

/// `tpi-run --model M --prompt P --temperature 0 --length N --json`'s text.
fn cli_greedy(model: &str, prompt: &str, length: usize) -> String {
    cli_greedy_text(&["--model", model, "--prompt", prompt], length)
}

/// The text of `tpi-run ARGS --temperature 0 --length N --json`.
fn cli_greedy_text(args: &[&str], length: usize) -> String {
    let out = tpi_run()
        .args(args)
        .args(["--temperature", "0", "--length", &length.to_string()])
        .args(["--threads", "1", "--json"])
        .output()
        .expect("run tpi-run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["text"].as_str().expect("text").to_string()
}

const PROMPT: &str = "Once upon a time, there was a little";

fn completion(prompt: &str, n: usize, stream: bool) -> Value {
    json!({"model": "stories260K", "prompt": prompt, "max_tokens": n, "temperature": 0,
           "stream": stream, "stream_options": {"include_usage": true}})
}

#[test]
fn greedy_completion_equals_the_command_line_whole_and_streamed() {
    let server = Server::start(&["--model", &stories()]);
    let expected = cli_greedy(&stories(), PROMPT, 40);
    assert!(!expected.is_empty());
    let (status, v) = server.post("/v1/completions", &completion(PROMPT, 40, false));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "stories260K");
    let text = v["choices"][0]["text"].as_str().expect("text");
    assert_eq!(text, expected);
    let u = &v["usage"];
    let finish = v["choices"][0]["finish_reason"].as_str().expect("finish");
    assert!(finish == "length" || finish == "stop", "{finish}");
    let done = u["completion_tokens"].as_u64().expect("completion_tokens");
    assert!((1..=40).contains(&done));
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().expect("prompt_tokens") + done)
    );

    // The same prompt again reuses its cached prefix; streamed, same text.
    let (status, body) = server.request(
        "POST",
        "/v1/completions",
        &[],
        completion(PROMPT, 40, true).to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(streamed_text(&body), expected);
    let ev = events(&body);
    assert!(ev.len() > 3, "one event per piece: {body}");
    let last = ev.last().expect("usage chunk");
    assert!(last["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(0));

    // A stop string ends the text before it; it is not returned.
    let word = expected.split_whitespace().nth(3).expect("a fourth word");
    let cut = expected.find(word).expect("the word");
    let mut req = completion(PROMPT, 40, false);
    req["stop"] = json!(["never appears", word]);
    let (_, v) = server.post("/v1/completions", &req);
    assert_eq!(v["choices"][0]["text"].as_str(), Some(&expected[..cut]));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    req["stream"] = json!(true);
    let (_, body) = server.request("POST", "/v1/completions", &[], req.to_string().as_bytes());
    assert_eq!(streamed_text(&body), expected[..cut]);
}

#[test]
fn world_size_3_answers_as_world_size_1() {
    let one = Server::start(&["--model", &stories()]);
    let three = Server::start(&["--model", &stories(), "--world-size", "3"]);
    for prompt in [PROMPT, "The dog"] {
        let (s1, a) = one.post("/v1/completions", &completion(prompt, 30, false));
        let (s3, b) = three.post("/v1/completions", &completion(prompt, 30, false));
        assert_eq!((s1, s3), (200, 200), "{a} {b}");
        assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    }
    // The cluster stays up between requests (heartbeats while idle).
    std::thread::sleep(Duration::from_millis(2500));
    let (s, _) = three.post("/v1/completions", &completion(PROMPT, 5, false));
    assert_eq!(s, 200);
}

fn error_of(status: u16, body: &str) -> (u16, Value) {
    let v = parse(body);
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    (status, v["error"].clone())
}

#[test]
fn bad_requests_get_openai_errors_with_their_status() {
    let server = Server::start(&["--model", &stories()]);
    let post = |path: &str, body: &[u8]| {
        let (status, text) = server.request("POST", path, &[], body);
        error_of(status, &text)
    };
    assert_eq!(post("/v1/completions", b"{not json").0, 400);
    let (s, e) = post("/v1/completions", br#"{"prompt":"a","max_tokens":"ten"}"#);
    assert_eq!((s, e["param"].as_str()), (400, Some("max_tokens")));
    let (s, e) = post("/v1/completions", br#"{"prompt":"a","temperature":[1]}"#);
    assert_eq!((s, e["param"].as_str()), (400, Some("temperature")));
    let (s, e) = post("/v1/completions", br#"{"model":"gpt-4","prompt":"a"}"#);
    assert_eq!((s, e["code"].as_str()), (404, Some("model_not_found")));
    let (s, e) = post("/v1/chat/completions", br#"{"model":"stories260K"}"#);
    assert_eq!((s, e["param"].as_str()), (400, Some("messages")));
    // stories260K has no chat template: chat is refused, saying so.
    let (s, e) = post(
        "/v1/chat/completions",
        br#"{"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(s, 400);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("chat template"),
        "{e}"
    );
    // A prompt past the context (512) is named.
    let long = "Once upon a time there was a dog. ".repeat(80);
    let (s, e) = post(
        "/v1/completions",
        json!({"prompt": long}).to_string().as_bytes(),
    );
    assert_eq!(s, 400);
    assert!(
        e["message"].as_str().unwrap_or("").contains("context"),
        "{e}"
    );
    let (s, e) = post("/v1/completions", br#"{"prompt":"a","max_tokens":100000}"#);
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("context_length_exceeded"))
    );

    let (s, _) = server.get("/v1/nothing");
    assert_eq!(s, 404);
    let (s, _) = server.get("/v1/completions");
    assert_eq!(s, 405);
    // 10 MB body: refused unread.
    let big = vec![b'a'; 10 << 20];
    let (s, _) = server.request("POST", "/v1/completions", &[], &big);
    assert_eq!(s, 413);
    // A header flood.
    let flood: Vec<String> = (0..2000)
        .map(|i| format!("X-Flood-{i}: {}", "y".repeat(20)))
        .collect();
    let flood: Vec<&str> = flood.iter().map(String::as_str).collect();
    let (s, _) = server.request("GET", "/health", &flood, b"");
    assert_eq!(s, 431);
    // A chunked body is refused.
    let (s, _) = server.request(
        "POST",
        "/v1/completions",
        &["Transfer-Encoding: chunked"],
        b"",
    );
    assert_eq!(s, 411);
    // Garbage instead of HTTP.
    let mut c = server.connect();
    c.write_all(b"\x16\x03\x01 hello\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut c).0, 400);

    // Still serving.
    let (s, v) = server.post("/v1/completions", &completion(PROMPT, 3, false));
    assert_eq!(s, 200, "{v}");
    let (s, body) = server.get("/v1/models");
    assert_eq!(s, 200);
    assert_eq!(parse(&body)["data"][0]["id"], "stories260K");
    let (s, page) = server.get("/");
    assert_eq!(s, 200);
    assert!(page.contains("/v1/chat/completions"));
}

#[test]
fn an_api_key_guards_the_api_but_not_health() {
    let server = Server::start(&["--model", &stories(), "--api-key", "sesame"]);
    let body = completion(PROMPT, 3, false).to_string();
    let (s, t) = server.request("POST", "/v1/completions", &[], body.as_bytes());
    assert_eq!(error_of(s, &t).1["code"], "invalid_api_key");
    assert_eq!(s, 401);
    let (s, _) = server.request("GET", "/v1/models", &["Authorization: Bearer wrong"], b"");
    assert_eq!(s, 401);
    let (s, _) = server.request("GET", "/v1/models", &["Authorization: Bearer sesame"], b"");
    assert_eq!(s, 200);
    let auth = ["Authorization: Bearer sesame"];
    let (s, _) = server.request("POST", "/v1/completions", &auth, body.as_bytes());
    assert_eq!(s, 200);
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn a_slow_client_is_dropped_while_others_are_served() {
    let server = Server::start(&["--model", &stories(), "--request-timeout", "1"]);
    let mut slow = server.connect();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n")
        .expect("write");
    let start = Instant::now();
    let mut answered = 0;
    // A byte every 200 ms: each read succeeds, the total deadline does not.
    let mut refused_at = None;
    for _ in 0..20 {
        if slow.write_all(b"X").is_err() {
            refused_at = Some(start.elapsed());
            break;
        }
        assert_eq!(server.get("/health").0, 200);
        answered += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = read_response(&mut slow);
    let took = refused_at.unwrap_or(start.elapsed());
    assert_eq!(status, 408);
    assert!(answered >= 3, "others were served meanwhile ({answered})");
    assert!(took < Duration::from_secs(5), "dropped after {took:?}");
}

#[test]
fn fifty_clients_at_once_get_answers_or_503_and_the_server_goes_on() {
    let server = Server::start(&["--model", &stories()]);
    let port = server.port;
    let body = completion(PROMPT, 30, false).to_string();
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
                let req = format!(
                    "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(req.as_bytes());
                read_response(&mut s).0
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(ok + busy, 50, "{statuses:?}");
    assert!(ok >= 1, "{statuses:?}");
    let (s, v) = server.post("/v1/completions", &completion(PROMPT, 5, false));
    assert_eq!(s, 200, "{v}");
}

/// Waits until `/health` counts `n` generations.
fn wait_generations(server: &Server, n: u64) -> Value {
    let start = Instant::now();
    loop {
        let h = server.health();
        if h["generations"].as_u64() >= Some(n) {
            return h;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_goes_away_stops_its_generation() {
    let server = Server::start(&["--model", &stories()]);
    let long = json!({"prompt": PROMPT, "max_tokens": 400, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    // Streamed: read the first piece, then hang up.
    let mut s = server.connect();
    let body = long.to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut seen = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"text\"") {
        let n = s.read(&mut b).expect("read");
        assert!(n > 0);
        seen.extend_from_slice(&b[..n]);
    }
    drop(s);
    let h = wait_generations(&server, 1);
    assert_eq!(h["cancelled"], 1, "{h}");
    let tokens = h["last_completion_tokens"].as_u64().expect("tokens");
    assert!(tokens < 100, "stopped after {tokens} of 400 tokens");
    eprintln!("stream cancelled after {tokens} of 400 tokens");

    // Not streamed: the client hangs up while waiting.
    let mut long = long;
    long["stream"] = json!(false);
    let body = long.to_string();
    let mut s = server.connect();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    drop(s);
    let h = wait_generations(&server, 2);
    assert_eq!(h["cancelled"], 2, "{h}");
    let tokens = h["last_completion_tokens"].as_u64().expect("tokens");
    assert!(tokens < 400, "stopped after {tokens} of 400 tokens");
    eprintln!("non-stream cancelled after {tokens} of 400 tokens");

    let (s, v) = server.post("/v1/completions", &completion(PROMPT, 5, false));
    assert_eq!(s, 200, "{v}");
}

/// A copy of stories260K whose tokenizer_config.json carries TinyLlama's
/// chat template (written with `</s>` and `<|user|>` text).
pub fn chat_model(tmp: &TempDir) -> std::path::PathBuf {
    let dir = tmp.path().join("stories-chat");
    std::fs::create_dir_all(&dir).expect("dir");
    let src = fixture_dir("stories260K");
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy");
    }
    let template: Value = serde_json::from_slice(
        &std::fs::read(fixture_dir("chat_templates").join("tinyllama-chat.json")).expect("read"),
    )
    .expect("json");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).expect("read"))
            .expect("json");
    config["chat_template"] = template["chat_template"].clone();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
    dir
}

/// The prompt ids of `messages` rendered by `template` (`None`: the
/// model's own) and tokenized as the server must, through the library.
pub fn chat_ids(
    model: &std::path::Path,
    template: Option<&std::path::Path>,
    messages: &Value,
) -> Vec<u32> {
    use tpi::model::chat_template::{ChatTemplate, Message};
    let t = match template {
        None => ChatTemplate::from_tokenizer_config_file(&model.join("tokenizer_config.json")),
        Some(f) => ChatTemplate::new(
            "test",
            &std::fs::read_to_string(f).expect("read"),
            Some("<s>"),
            Some("</s>"),
        ),
    }
    .expect("template");
    let msgs: Vec<Message> = messages
        .as_array()
        .expect("list")
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().expect("role").to_string(),
            content: m["content"].clone(),
        })
        .collect();
    let text = t.render(&msgs, true).expect("render");
    let tok =
        tpi::model::tokenizer::Tokenizer::from_file(&model.join("tokenizer.json")).expect("tok");
    tok.encode_rendered(&text).expect("encode")
}

/// `tpi-run --prompt-ids IDS --temperature 0 --length N --json`'s text.
pub fn cli_greedy_ids(model: &str, ids: &[u32], length: usize) -> String {
    cli_greedy_text(&["--model", model, "--prompt-ids", &ids_arg(ids)], length)
}

#[test]
fn chat_renders_the_template_once_with_one_bos_and_answers_as_the_command_line() {
    let tmp = TempDir::new("serve-chat");
    let model = chat_model(&tmp);
    let model_arg = model.display().to_string();
    // The model's own template, then Llama 2's from a file (it writes BOS text).
    let llama2 = tmp.path().join("llama2.jinja");
    let t: Value = serde_json::from_slice(
        &std::fs::read(fixture_dir("chat_templates").join("llama2-chat.json")).expect("read"),
    )
    .expect("json");
    std::fs::write(&llama2, t["chat_template"].as_str().expect("template")).expect("write");
    for template in [None, Some(llama2.as_path())] {
        let mut args = vec!["--model", model_arg.as_str()];
        let file = template.map(|p| p.display().to_string());
        if let Some(f) = &file {
            args.extend(["--chat-template", f.as_str()]);
        }
        let server = Server::start(&args);
        let messages = json!([{"role": "user", "content": "Tell me a story about a cat."}]);
        let ids = chat_ids(&model, template, &messages);
        // As transformers' apply_chat_template(tokenize=True): BOS only where
        // the template writes it (Llama 2's does, TinyLlama's does not), never twice.
        let n_bos = ids.iter().filter(|&&i| i == 1).count();
        assert_eq!(n_bos, usize::from(template.is_some()), "{ids:?}");
        assert!(template.is_none() || ids[0] == 1, "{ids:?}");
        let expected = cli_greedy_ids(&model_arg, &ids, 30);
        let req = json!({"messages": messages, "max_tokens": 30, "temperature": 0});
        let (s, v) = server.post("/v1/chat/completions", &req);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        let answer = v["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert_eq!(answer, expected);
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(ids.len() as u64));

        let mut stream = req.clone();
        stream["stream"] = json!(true);
        let (s, body) = server.request(
            "POST",
            "/v1/chat/completions",
            &[],
            stream.to_string().as_bytes(),
        );
        assert_eq!(s, 200);
        assert_eq!(events(&body)[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(streamed_text(&body), expected);

        // The next turn continues the conversation: its prefix is cached.
        let turn2 = json!([messages[0], {"role": "assistant", "content": answer},
                           {"role": "user", "content": "And then?"}]);
        let (s, v) = server.post(
            "/v1/chat/completions",
            &json!({"messages": turn2, "max_tokens": 5}),
        );
        assert_eq!(s, 200, "{v}");
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached");
        assert!(
            cached >= ids.len() as u64 / 2,
            "cached {cached} of {}",
            ids.len()
        );
    }
}

/// A GGUF file's bytes with `tokenizer.chat_template` = `template`
/// put first among its metadata. The entry is padded (inside a Jinja
/// comment) to a multiple of 32 bytes, the file's alignment, so the data
/// section after it stays aligned with its padding unchanged.
fn with_chat_template(gguf: &[u8], template: &str) -> Vec<u8> {
    let key = b"tokenizer.chat_template";
    let entry = |t: &str| {
        let mut e = Vec::new();
        e.extend_from_slice(&(key.len() as u64).to_le_bytes());
        e.extend_from_slice(key);
        e.extend_from_slice(&8u32.to_le_bytes()); // GGUF string
        e.extend_from_slice(&(t.len() as u64).to_le_bytes());
        e.extend_from_slice(t.as_bytes());
        e
    };
    let mut padded = format!("{template}{{# #}}");
    while entry(&padded).len() % 32 != 0 {
        padded = padded.replace("{# ", "{#  ");
    }
    let n_kv = u64::from_le_bytes(gguf[16..24].try_into().expect("header"));
    let mut out = gguf[..16].to_vec();
    out.extend_from_slice(&(n_kv + 1).to_le_bytes());
    out.extend_from_slice(&entry(&padded));
    out.extend_from_slice(&gguf[24..]);
    out
}

#[test]
fn a_gguf_chat_template_is_read_from_its_metadata() {
    use tpi::model::chat_template::{ChatTemplate, Message};
    let tmp = TempDir::new("serve-gguf-chat");
    let src = fixture_dir("gguf_run").join("stories-q8_0.gguf");
    let t: Value = serde_json::from_slice(
        &std::fs::read(fixture_dir("chat_templates").join("llama2-chat.json")).expect("read"),
    )
    .expect("json");
    let template = t["chat_template"].as_str().expect("template");
    let file = tmp.path().join("stories-chat.gguf");
    let bytes = with_chat_template(&std::fs::read(&src).expect("read"), template);
    std::fs::write(&file, bytes).expect("write");
    let model_arg = file.display().to_string();

    let ckpt = tpi::model::checkpoint::Checkpoint::open(Some(&file)).expect("open");
    let text = ChatTemplate::new("t", template, Some("<s>"), Some("</s>"))
        .expect("template")
        .render(&[Message::new("user", "Tell me a story.")], true)
        .expect("render");
    let ids = ckpt
        .tokenizer
        .as_ref()
        .expect("tokenizer")
        .encode_rendered(&text)
        .expect("encode");
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 1, "{ids:?}");
    let expected = cli_greedy_ids(&model_arg, &ids, 20);

    let server = Server::start(&["--model", &model_arg]);
    let (s, v) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Tell me a story."}],
                "max_tokens": 20, "temperature": 0}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "stories-chat.gguf");
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str(),
        Some(expected.as_str())
    );
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(ids.len() as u64));
}
