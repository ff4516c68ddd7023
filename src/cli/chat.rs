//! The chat template of a served model.

use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use std::path::Path;

/// A chat template that renders messages into prompt text.
pub struct ChatRender;

impl crate::serve::Render for ChatRender {
    fn render(
        &self,
        _messages: &[crate::serve::api::ChatMessage],
    ) -> std::result::Result<String, String> {
        Err("no chat template".to_string())
    }
}

/// The template for `ckpt`, or why it has none.
pub fn template(
    ckpt: &Checkpoint,
    _file: Option<&Path>,
) -> Result<std::result::Result<ChatRender, String>> {
    Ok(Err(format!(
        "{} has no chat template this build can read",
        ckpt.origin
    )))
}
