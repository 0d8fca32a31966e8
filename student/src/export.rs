//! What the exported Hugging Face folder must say for `transformers` to use the student as
//! trained: the chat template it was trained with (in `tokenizer_config.json`), and stop ids
//! that include the template's end-of-turn token (in `generation_config.json` and
//! `config.json`). The weights and files are written by the trainer
//! (`Trainer::save_model`); this module prepares the config and tokenizer it writes, and checks
//! a written folder.

use std::path::Path;

use distill_models::config::TokenIds;
use distill_models::Checkpoint;

use crate::data::Renderer;
use crate::trainer::StudentInit;
use crate::{Error, Result};

/// Sets the student's template, EOS token and stop ids from the renderer the data was built
/// with, so generation stops exactly where training put the end of the turn.
pub fn prepare(init: &mut StudentInit, renderer: &Renderer) {
    let eot = renderer.end_of_turn_id();
    let eot_text = eot.and_then(|id| renderer.tokenizer().inner.id_to_token(id));
    let mut tokenizer = renderer.tokenizer().clone();
    tokenizer.chat_template = Some(renderer.template().source().to_string());
    if let Some(text) = &eot_text {
        // Instruct releases name their end-of-turn token as `eos_token` (Qwen2.5-Instruct's
        // `<|im_end|>`); a template that closes turns with `{{ eos_token }}` is unchanged by
        // this, since its end-of-turn token is that EOS already.
        tokenizer.eos_token = Some(text.clone());
    }
    let mut stop: Vec<u32> = init.generation.eos_token_ids();
    for &id in renderer.stop_ids() {
        if !stop.contains(&id) {
            stop.push(id);
        }
    }
    if init.generation.pad_token_id.is_none() {
        init.generation.pad_token_id = tokenizer
            .pad_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t))
            .or_else(|| stop.first().copied());
    }
    let ids = match stop.as_slice() {
        [one] => TokenIds::One(*one),
        _ => TokenIds::Many(stop.clone()),
    };
    init.generation.eos_token_id = Some(ids.clone());
    init.config.common_mut().eos_token_id = Some(ids);
    init.tokenizer = Some(tokenizer);
}

/// Checks an exported folder: it opens, has a tokenizer with a chat template, and its stop ids
/// include `end_of_turn`.
pub fn check_folder(dir: &Path, end_of_turn: Option<u32>) -> Result<Checkpoint> {
    let ckpt = Checkpoint::open(dir)?;
    let tokenizer = ckpt.tokenizer()?;
    if tokenizer.chat_template.is_none() {
        return Err(Error::checkpoint(dir, "the tokenizer has no chat template"));
    }
    if let Some(id) = end_of_turn {
        let eos = ckpt.eos_token_ids();
        if !eos.contains(&id) {
            return Err(Error::checkpoint(
                dir,
                format!("the end-of-turn id `{id}` is not among the EOS ids `{eos:?}`"),
            ));
        }
    }
    Ok(ckpt)
}
