//! The chat template of a served or chatting model: `--chat-template FILE`, else the
//! HF directory's `tokenizer_config.json`, else the GGUF file's
//! `tokenizer.chat_template`; with the model's BOS and EOS token texts.
//! A model without one serves completions only (chat answers 400 why).

use super::usage;
use crate::error::{Error, Result};
use crate::model::chat_template::{ChatTemplate, ChatTemplateError, Message, MAX_TEMPLATE_BYTES};
use crate::model::checkpoint::Checkpoint;
use crate::model::source::Weights;
use crate::serve::api::ChatMessage;
use std::path::Path;

/// A model's chat template as the server renders it: messages then the
/// assistant's header (`add_generation_prompt`).
pub struct ChatRender(ChatTemplate);

impl ChatRender {
    /// `messages` then the assistant's header.
    pub fn render_messages(
        &self,
        messages: &[Message],
    ) -> std::result::Result<String, ChatTemplateError> {
        self.0.render(messages, true)
    }
}

impl crate::serve::Render for ChatRender {
    fn render(&self, messages: &[ChatMessage]) -> std::result::Result<String, String> {
        let messages: Vec<Message> = messages
            .iter()
            .map(|m| Message {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        self.render_messages(&messages).map_err(|e| e.to_string())
    }
}

/// The template for the model at `path` (`ckpt` opened from it), or why
/// it has none. A `--chat-template` file that cannot be read or parsed is
/// an error; a model's own broken template only disables chat.
pub fn template(
    ckpt: &Checkpoint,
    path: Option<&Path>,
    file: Option<&Path>,
) -> Result<std::result::Result<ChatRender, String>> {
    let (own, bos, eos) = model_template(ckpt, path);
    // Without token texts of its own, the model's BOS and EOS ids named
    // by its tokenizer (a `--chat-template` for a bare HF directory).
    let token = |id: Option<u32>| ckpt.tokenizer.as_ref()?.id_to_token(id?);
    let bos = bos.or_else(|| token(ckpt.config.bos_token_id));
    let eos = eos.or_else(|| token(ckpt.config.eos_token_ids.first().copied()));
    let Some(file) = file else {
        return Ok(own.map(ChatRender));
    };
    let text = read_bounded(file)?;
    let origin = file.display().to_string();
    ChatTemplate::new(&origin, &text, bos.as_deref(), eos.as_deref())
        .map(|t| Ok(ChatRender(t)))
        .map_err(|e| usage("--chat-template", e.to_string()))
}

/// The model's own template (or why none) and its BOS/EOS token texts.
fn model_template(
    ckpt: &Checkpoint,
    path: Option<&Path>,
) -> (
    std::result::Result<ChatTemplate, String>,
    Option<String>,
    Option<String>,
) {
    if let Weights::Gguf(g) = &ckpt.weights {
        let meta = g.gguf.metadata();
        let token = |key: &str| {
            let id = meta.get_u32(key).ok()?;
            let tokens = meta.get_str_array("tokenizer.ggml.tokens").ok()?;
            tokens.get(id as usize).map(str::to_string)
        };
        let (bos, eos) = (
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        );
        let origin = format!("{} tokenizer.chat_template", ckpt.origin);
        let t = match meta.get_str("tokenizer.chat_template") {
            Ok(text) => ChatTemplate::new(&origin, text, bos.as_deref(), eos.as_deref())
                .map_err(|e| e.to_string()),
            Err(_) => Err(format!("{} has no tokenizer.chat_template", ckpt.origin)),
        };
        return (t, bos, eos);
    }
    let Some(dir) = path.filter(|p| p.is_dir()) else {
        return (
            Err(format!("{} has no chat template", ckpt.origin)),
            None,
            None,
        );
    };
    let config_path = dir.join("tokenizer_config.json");
    if !config_path.is_file() {
        return (
            Err(format!("{} has no tokenizer_config.json", dir.display())),
            None,
            None,
        );
    }
    let config: Option<serde_json::Value> = std::fs::read(&config_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let special = |k: &str| {
        let v = config.as_ref()?.get(k)?;
        v.as_str()
            .or_else(|| v.get("content").and_then(|c| c.as_str()))
            .map(str::to_string)
    };
    let (bos, eos) = (special("bos_token"), special("eos_token"));
    let t = ChatTemplate::from_tokenizer_config_file(&config_path).map_err(|e| e.to_string());
    (t, bos, eos)
}

/// A template file's text, refused past [`MAX_TEMPLATE_BYTES`].
fn read_bounded(file: &Path) -> Result<String> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: format!("--chat-template {}", file.display()),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(io)?
        .take(MAX_TEMPLATE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(usage(
            "--chat-template",
            format!(
                "{} is larger than {MAX_TEMPLATE_BYTES} bytes",
                file.display()
            ),
        ));
    }
    Ok(text)
}
