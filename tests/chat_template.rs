//! Chat templates against HF transformers: tests/fixtures/chat_templates
//! holds the real templates of Llama 2/3/3.1/3.2, Qwen2.5, Mistral v0.1/v0.2
//! and TinyLlama (zephyr), and expected.json what transformers'
//! `apply_chat_template` renders for each conversation (written by
//! tools/chat_template_fixture.py). tpi must render the same bytes, or fail
//! where transformers failed (with the template's own message when the
//! template called raise_exception). Plus the limits: hostile templates
//! end in an error in bounded time.

use crate::common::{fixture_dir, TempDir};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tpi::model::chat_template::{ChatTemplate, ChatTemplateError, Message, MAX_TEMPLATE_BYTES};

fn expected() -> Value {
    let path = fixture_dir("chat_templates").join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn template_fixture(name: &str) -> Value {
    let path = fixture_dir("chat_templates").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(name: &str, fixed_now: i64) -> ChatTemplate {
    let t = template_fixture(name);
    ChatTemplate::new(
        &format!("{name}.json"),
        t["chat_template"].as_str().unwrap(),
        t["bos_token"].as_str(),
        t["eos_token"].as_str(),
    )
    .unwrap()
    .with_fixed_now(fixed_now)
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().unwrap().to_string(),
            content: m["content"].clone(),
        })
        .collect()
}

/// Checks one rendering against transformers' result; returns what differs.
fn check(label: &str, got: Result<String, ChatTemplateError>, case: &Value) -> Option<String> {
    match (&case["expected"], got) {
        (Value::String(want), Ok(got)) if *want == got => None,
        (Value::String(want), Ok(got)) => {
            let at = want
                .bytes()
                .zip(got.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            Some(format!(
                "{label}: differs at byte {at}\n  transformers: {want:?}\n  tpi:          {got:?}"
            ))
        }
        (Value::String(want), Err(e)) => Some(format!(
            "{label}: tpi failed ({e}), transformers rendered {want:?}"
        )),
        (_, Ok(got)) => Some(format!(
            "{label}: tpi rendered {got:?}, transformers raised {}",
            case["error"]
        )),
        (_, Err(e)) => {
            let kind = case["error"]["type"].as_str().unwrap();
            let message = case["error"]["message"].as_str().unwrap();
            let ok = match (kind, &e) {
                ("TemplateError", ChatTemplateError::Raised { message: m, .. }) => m == message,
                ("TemplateError", _) => false,
                ("ValueError", e) => matches!(e, ChatTemplateError::NoMessages { .. }),
                // UndefinedError, TypeError: the engines word these differently.
                (_, e) => matches!(e, ChatTemplateError::Render { .. }),
            };
            if !ok {
                return Some(format!(
                    "{label}: transformers raised {kind}({message:?}), tpi: {e:?}"
                ));
            }
            // The message reaches the user through Display.
            if kind == "TemplateError" && !e.to_string().contains(message) {
                return Some(format!("{label}: {e} does not show {message:?}"));
            }
            None
        }
    }
}

#[test]
fn chat_templates_render_as_transformers_does() {
    let doc = expected();
    let fixed_now = doc["fixed_now_unix"].as_i64().unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 160, "{} cases", cases.len());
    let mut failures = Vec::new();
    let (mut n_rendered, mut n_raised) = (0, 0);
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let template = load(name, fixed_now);
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = match case.get("extra") {
            Some(Value::Object(extra)) => template.render_with(&msgs, agp, extra),
            _ => template.render(&msgs, agp),
        };
        if case["expected"].is_string() {
            n_rendered += 1;
        } else if case["error"]["type"] == "TemplateError" {
            n_raised += 1;
        }
        let label = format!(
            "{name} / {} / add_generation_prompt={agp}{}",
            case["conversation"].as_str().unwrap(),
            case.get("extra")
                .map(|e| format!(" / {e}"))
                .unwrap_or_default()
        );
        failures.extend(check(&label, got, case));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from transformers {}:\n{}",
        failures.len(),
        cases.len(),
        doc["transformers"],
        failures[..failures.len().min(5)].join("\n")
    );
    // Both outcomes are exercised, on every template.
    assert!(
        n_rendered >= 100 && n_raised >= 16,
        "{n_rendered} rendered, {n_raised} raised"
    );
}

#[test]
fn engine_features_match_transformers() {
    // tojson (json.dumps options), Python printing of values, trim, Python
    // string methods, loop controls, whitespace control, raise_exception and
    // strftime_now, each through transformers' own environment.
    let doc = expected();
    let fixed_now = doc["fixed_now_unix"].as_i64().unwrap();
    let mut failures = Vec::new();
    let snippets = doc["snippets"].as_array().unwrap();
    assert!(snippets.len() >= 13);
    for case in snippets {
        let name = case["name"].as_str().unwrap();
        let template = ChatTemplate::new(
            name,
            case["chat_template"].as_str().unwrap(),
            Some("<s>"),
            Some("</s>"),
        )
        .unwrap()
        .with_fixed_now(fixed_now);
        let got = template.render(&messages(&case["messages"]), false);
        failures.extend(check(name, got, case));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn tokenizer_config_forms_are_read() {
    let t = template_fixture("llama2-chat");
    let text = t["chat_template"].as_str().unwrap();
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
    ];
    let want = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]";

    // Tokens as {"content": ...} objects (Llama 2's own config), template a string.
    let config = json!({
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": false},
        "chat_template": text,
    });
    let got = ChatTemplate::from_tokenizer_config("cfg", &config).unwrap();
    assert_eq!(got.render(&msgs, false).unwrap(), want);

    // The list of named templates: "default" is picked.
    let config = json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": text},
        ],
    });
    let got = ChatTemplate::from_tokenizer_config("cfg", &config).unwrap();
    assert_eq!(got.render(&msgs, false).unwrap(), want);

    // bos_token null (Qwen2.5): undefined in the template, prints nothing.
    let config =
        json!({"bos_token": null, "chat_template": "[{{ bos_token }}]{{ bos_token is defined }}"});
    let got = ChatTemplate::from_tokenizer_config("cfg", &config).unwrap();
    assert_eq!(got.render(&msgs, false).unwrap(), "[]False");

    // From a file.
    let dir = TempDir::new("chat-template");
    let path = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &path,
        serde_json::to_string(&json!({"chat_template": text, "bos_token": "<s>"})).unwrap(),
    )
    .unwrap();
    let got = ChatTemplate::from_tokenizer_config_file(&path).unwrap();
    assert_eq!(got.render(&msgs, false).unwrap(), want);
    assert_eq!(got.origin(), path.display().to_string());
}

#[test]
fn missing_and_malformed_templates_are_errors_naming_the_origin() {
    // No chat template: a value the CLI can print.
    for config in [json!({"bos_token": "<s>"}), json!({"chat_template": null})] {
        let e = ChatTemplate::from_tokenizer_config("models/x/tokenizer_config.json", &config)
            .unwrap_err();
        assert!(matches!(e, ChatTemplateError::Missing { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("models/x/tokenizer_config.json") && text.contains("no chat template"),
            "{text}"
        );
    }
    // The repo's model fixtures carry no template.
    let e = ChatTemplate::from_tokenizer_config_file(
        &fixture_dir("llama-gqa-bf16").join("tokenizer_config.json"),
    )
    .unwrap_err();
    assert!(matches!(e, ChatTemplateError::Missing { .. }), "{e:?}");

    // Wrong shapes.
    for config in [
        json!([1, 2]),
        json!({"chat_template": 3}),
        json!({"chat_template": [{"name": "tool_use", "template": "x"}]}),
        json!({"chat_template": [{"name": "default"}]}),
        json!({"chat_template": "x", "eos_token": 5}),
        json!({"chat_template": "x", "bos_token": {"text": "<s>"}}),
    ] {
        let e = ChatTemplate::from_tokenizer_config("cfg.json", &config).unwrap_err();
        assert!(
            matches!(e, ChatTemplateError::Config { .. }),
            "{config}: {e:?}"
        );
        assert!(e.to_string().starts_with("cfg.json: "), "{e}");
    }

    // Not JSON, not there.
    let dir = TempDir::new("chat-template-bad");
    let path = dir.path().join("tokenizer_config.json");
    std::fs::write(&path, b"{\"chat_template\": ").unwrap();
    let e = ChatTemplate::from_tokenizer_config_file(&path).unwrap_err();
    assert!(matches!(e, ChatTemplateError::Config { .. }), "{e:?}");
    let e = ChatTemplate::from_tokenizer_config_file(&dir.path().join("absent.json")).unwrap_err();
    assert!(matches!(e, ChatTemplateError::Io { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_some());

    // A template that does not parse: the error names it and keeps the cause.
    let e = ChatTemplate::new(
        "gguf:tokenizer.chat_template",
        "{% for m in %}x{% endfor %}",
        None,
        None,
    )
    .unwrap_err();
    assert!(matches!(e, ChatTemplateError::Parse { .. }), "{e:?}");
    assert!(e
        .to_string()
        .starts_with("gguf:tokenizer.chat_template: chat template does not parse"));
    assert!(std::error::Error::source(&e).is_some());
    for bad in [
        "{{ x ",
        "{% if %}",
        "{% endfor %}",
        "{{ 'unterminated }}",
        "{% macro %}",
    ] {
        assert!(ChatTemplate::new("t", bad, None, None).is_err(), "{bad}");
    }

    // Size limit.
    let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    let e = ChatTemplate::new("t", &big, None, None).unwrap_err();
    assert!(matches!(e, ChatTemplateError::TooLarge { .. }), "{e:?}");
    assert!(ChatTemplate::new("t", &big[1..], None, None).is_ok());
}

#[test]
fn raise_exception_and_render_errors_carry_the_message() {
    let t = ChatTemplate::new(
        "t",
        "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools here: ' + m.content) }}{% endif %}{{ m.content }}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    assert_eq!(t.render(&[Message::new("user", "hi")], true).unwrap(), "hi");
    let e = t
        .render(
            &[Message::new("user", "hi"), Message::new("tool", "ls")],
            true,
        )
        .unwrap_err();
    match &e {
        ChatTemplateError::Raised { message, .. } => assert_eq!(message, "no tools here: ls"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("no tools here: ls"), "{e}");
    assert!(std::error::Error::source(&e).is_some());

    // Errors that are not raise_exception: kind Render, source kept.
    for bad in [
        "{{ messages[0].content + 1 }}",
        "{{ messages[5].role.x }}",
        "{{ messages[0].content.nosuchmethod() }}",
        "{{ strftime_now('%Q') }}",
        "{{ messages | tojson(indent=[1]) }}",
        "{{ raise_exception }}{{ 1 / 0 }}",
    ] {
        let t = ChatTemplate::new("t", bad, None, None).unwrap();
        let e = t.render(&[Message::new("user", "hi")], false).unwrap_err();
        assert!(
            matches!(e, ChatTemplateError::Render { .. }),
            "{bad}: {e:?}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}

#[test]
fn messages_of_any_shape_render_without_panics() {
    let t = load("llama3-instruct", 0);
    // No messages: refused up front, as transformers does.
    let e = t.render(&[], true).unwrap_err();
    assert!(matches!(e, ChatTemplateError::NoMessages { .. }), "{e:?}");
    // Unknown roles go through Llama 3 as they are.
    let got = t
        .render(&[Message::new("narrator", "Once")], false)
        .unwrap();
    assert_eq!(
        got,
        "<|begin_of_text|><|start_header_id|>narrator<|end_header_id|>\n\nOnce<|eot_id|>"
    );
    // Non-string content: Python's str() of it, as transformers prints it.
    let odd = [
        Message {
            role: "user".into(),
            content: json!(42),
        },
        Message {
            role: "user".into(),
            content: json!({"a": [true, null, 1.5]}),
        },
        Message {
            role: "user".into(),
            content: json!(null),
        },
        Message {
            role: "".into(),
            content: json!("\u{0}\u{7f}\u{2028}"),
        },
    ];
    let got = t.render(&odd, false).unwrap();
    assert!(got.contains("\n\n42<|eot_id|>"), "{got:?}");
    assert!(got.contains("{'a': [True, None, 1.5]}"), "{got:?}");
    // Deeply nested content is refused, not a stack overflow.
    let mut deep = json!("x");
    for _ in 0..10_000 {
        deep = json!([deep]);
    }
    let deep_msg = [Message {
        role: "user".into(),
        content: deep,
    }];
    let e = t.render(&deep_msg, false).unwrap_err();
    assert!(matches!(e, ChatTemplateError::Render { .. }), "{e:?}");
}

/// Renders `template` on a thread with a 2 MiB stack (a common thread
/// default); returns the error and how long it took.
fn hostile(template: &str) -> (ChatTemplateError, Duration) {
    let template = template.to_string();
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let start = Instant::now();
            let result = ChatTemplate::new("hostile", &template, None, None)
                .and_then(|t| t.render(&[Message::new("user", "hi")], true));
            (
                result.expect_err("a hostile template must fail"),
                start.elapsed(),
            )
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn hostile_templates_end_in_errors_in_bounded_time() {
    let nested_parens = format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000));
    let nested_ifs = format!(
        "{}x{}",
        "{% if true %}".repeat(2000),
        "{% endif %}".repeat(2000)
    );
    let cases = [
        // Endless loops (range is capped at 100k items, so nest them).
        (
            "loop",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
        ),
        // Unbounded recursion.
        ("recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
        // Output / memory doubling: 2^64 bytes.
        (
            "doubling",
            "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        ),
        ("huge_repeat", "{{ 'x' * 1000000000 }}"),
        (
            "huge_output",
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ messages }}{% endfor %}{% endfor %}",
        ),
        // Not here: doubling a *list* (`ns.l = ns.l + ns.l`) 33 times. minijinja
        // 3.1.0 keeps list `+` lazy and, past 32 chained concatenations,
        // copies the 2^33 items without charging fuel: the process aborts on
        // out-of-memory (see the module doc of src/model/chat_template/mod.rs).
        ("nested_parens", nested_parens.as_str()),
        ("nested_ifs", nested_ifs.as_str()),
    ];
    for (name, template) in cases {
        let (e, took) = hostile(template);
        println!("{name}: {took:?}: {e}");
        assert!(
            matches!(
                e,
                ChatTemplateError::Render { .. } | ChatTemplateError::Parse { .. }
            ),
            "{name}: {e:?}"
        );
        assert!(took < Duration::from_secs(20), "{name} took {took:?}");
    }
}

#[test]
fn long_conversations_fit_the_fuel() {
    // 100 turns of 2 KB each through the biggest fixture template.
    let t = load("llama3.1-instruct", 0);
    let mut msgs = vec![Message::new("system", "You are a helpful assistant.")];
    for i in 0..100 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        msgs.push(Message::new(role, format!("turn {i} ").repeat(250)));
    }
    let out = t.render(&msgs, true).unwrap();
    assert!(out.len() > 200_000, "{}", out.len());
}
