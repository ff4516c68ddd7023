//! `tpi-run chat`: a conversation in the terminal. Each line read from
//! stdin is the user's next message; the conversation is rendered with
//! the model's chat template and the answer streams to stdout as it is
//! generated. Prompts, notices and timings go to stderr, so
//! `tpi-run chat < questions > answers` keeps only the answers, and the
//! same binary works over `adb shell` and ssh. Each turn continues the
//! KV cache of the last: only the new part of the conversation is
//! computed. `/reset` starts a new conversation, `/exit` or end of input
//! ends the program.

use super::chat_template::{template, ChatRender};
use super::{check_model_args, stdout_err, usage, worker, Loaded, ModelArgs, SamplingArgs};
use crate::engine::{Flow, GenOptions};
use crate::error::Result;
use crate::model::chat_template::Message;
use crate::session::Generator;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// Longest message line read from stdin.
const MAX_LINE_BYTES: u64 = 1 << 20;
/// How often a cluster's workers hear from rank 0 while the user types.
const KEEPALIVE: Duration = Duration::from_millis(500);

/// `tpi-run chat` flags: the model and cluster flags of a generation,
/// sampling, and the conversation's frame.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Most tokens per answer (the whole conversation must also fit the
    /// model's context).
    #[arg(long, default_value_t = 512)]
    pub length: usize,
    /// A system message that opens the conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// A Jinja chat template file, instead of the model's own
    /// (tokenizer_config.json, or the GGUF's tokenizer.chat_template).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
}

/// A line of stdin: a message, or why it could not be read.
type Line = std::result::Result<String, String>;

/// Runs `tpi-run chat`.
pub fn run_chat(a: &ChatArgs) -> Result<()> {
    let m = &a.model;
    check_model_args(m)?;
    let sampler = a.sampling.config()?;
    if a.length == 0 {
        return Err(usage("--length", "an answer needs at least 1 token"));
    }
    if let Some(rank) = m.rank.filter(|&r| r > 0) {
        return worker(m, rank);
    }
    let loaded = Loaded::open(m)?;
    let ckpt = &loaded.ckpt;
    let tokenizer = ckpt.tokenizer.as_ref().ok_or_else(|| {
        usage(
            "chat",
            format!("needs {}/tokenizer.json (chat takes text)", ckpt.origin),
        )
    })?;
    let chat = template(ckpt, m.model.as_deref(), a.chat_template.as_deref())?
        .map_err(|why| usage("--chat-template", format!("chat needs a template: {why}")))?;
    let mut gen = loaded.start(m)?;
    let context = ckpt.config.max_seq_len;
    let opts = |prompt: usize| GenOptions {
        length: a.length.min(context - prompt),
        sampler,
        eos_ids: ckpt.config.eos_token_ids.clone(),
        ignore_eos: false,
        keep_prompt_logits: false,
    };
    let talk = Talk { quiet: m.quiet };
    talk.say(&format!(
        "chat with {}: a line is a message; /reset starts over, /exit ends",
        ckpt.origin
    ));
    let lines = read_lines();
    let mut messages = first_messages(a.system.as_deref());
    loop {
        talk.prompt();
        let line = match next_line(&lines, gen.as_mut())? {
            None => break,
            Some(Err(why)) => {
                talk.warn(&why);
                continue;
            }
            Some(Ok(line)) => line,
        };
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = first_messages(a.system.as_deref());
                talk.say("a new conversation");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let ids = match prompt_ids(&chat, tokenizer, &messages, context) {
            Ok(ids) => ids,
            Err(why) => {
                talk.warn(&why);
                messages.pop();
                continue;
            }
        };
        let stdout = std::io::stdout();
        let mut on_text = |piece: &str| -> std::result::Result<Flow, crate::engine::error::Cause> {
            let mut out = stdout.lock();
            out.write_all(piece.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Box::new(stdout_err(e)))?;
            Ok(Flow::Continue)
        };
        let out = gen.generate(&ids, &opts(ids.len()), &mut on_text)?;
        writeln!(stdout.lock()).map_err(stdout_err)?;
        talk.say(&format!(
            "[{} tokens, {:.1} tokens/s; prompt {} tokens, {} of them reused]",
            out.generated_ids.len(),
            out.tokens_per_s(),
            out.prompt_ids.len(),
            out.cached_tokens
        ));
        messages.push(Message::new("assistant", out.text));
    }
    Ok(())
}

/// The conversation before the first message: the system message, if any.
fn first_messages(system: Option<&str>) -> Vec<Message> {
    system
        .map(|s| Message::new("system", s))
        .into_iter()
        .collect()
}

/// The ids of `messages` rendered for the assistant's answer, or why the
/// conversation cannot go on (a template error, past the context).
fn prompt_ids(
    chat: &ChatRender,
    tokenizer: &crate::model::tokenizer::Tokenizer,
    messages: &[Message],
    context: usize,
) -> std::result::Result<Vec<u32>, String> {
    let text = chat.render_messages(messages).map_err(|e| e.to_string())?;
    let ids = tokenizer
        .encode_rendered(&text)
        .map_err(|e| e.to_string())?;
    if ids.len() >= context {
        return Err(format!(
            "the conversation is {} tokens, the model holds {context}: /reset starts a new one",
            ids.len()
        ));
    }
    Ok(ids)
}

/// Lines of stdin, read on their own thread so that rank 0 can keep a
/// cluster's workers alive while the user types.
fn read_lines() -> Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        loop {
            let mut buf = Vec::new();
            let read = stdin
                .lock()
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut buf);
            let line = match read {
                Ok(0) => return,
                Err(e) => Err(format!("reading stdin: {e}")),
                Ok(_) if !buf.ends_with(b"\n") && buf.len() as u64 == MAX_LINE_BYTES => {
                    // The rest of this line is dropped with it.
                    let mut rest = Vec::new();
                    let _ = stdin.lock().read_until(b'\n', &mut rest);
                    Err(format!("a message is at most {MAX_LINE_BYTES} bytes"))
                }
                Ok(_) => String::from_utf8(buf)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|_| "the line is not UTF-8 text".to_string()),
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line (`None` at the end of input), heartbeating `gen` while
/// waiting for it.
fn next_line(lines: &Receiver<Line>, gen: &mut dyn Generator) -> Result<Option<Line>> {
    loop {
        match lines.recv_timeout(KEEPALIVE) {
            Ok(line) => return Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => gen.keepalive()?,
        }
    }
}

/// What the chat says on stderr (nothing but warnings with `--quiet`).
struct Talk {
    quiet: bool,
}

impl Talk {
    fn say(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    fn warn(&self, text: &str) {
        eprintln!("tpi-run chat: {text}");
    }

    fn prompt(&self) {
        if !self.quiet {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
    }
}
