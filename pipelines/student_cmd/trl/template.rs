//! The chat template TRL trains with. TRL's assistant-only loss labels what a template puts
//! inside `{% generation %}` … `{% endgeneration %}`; templates without those markers are
//! swapped for TRL's own training variant when TRL knows them, and refused otherwise.
//!
//! distill's built-in templates (`chatml`, `llama3`, `deepseek-r1`, and ChatML as the fallback
//! of a tokenizer without a template) have training variants shipped in
//! `engines/trl/templates/`, written beside the recipe as `chat_template.jinja`: they mark
//! exactly the tokens distill's own trainer labels (the last assistant turn's content, after any
//! `<think>\n` the generation prompt already wrote, through its end-of-turn token), so both
//! engines train the same thing.

use std::path::Path;

use distill_models::chat::ChatTemplate;

/// What the recipe says about the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The template already marks assistant turns: TRL uses it as it is.
    Marked,
    /// distill's training variant of one of its built-in templates, to write as
    /// `chat_template.jinja`.
    Variant {
        name: &'static str,
        source: &'static str,
    },
    /// The base model's own template: TRL swaps in its training variant (Qwen2.5,
    /// DeepSeek-R1-Distill, Llama 3, Qwen3, …) or stops naming the problem.
    LeftToTrl,
}

const VARIANTS: [(&str, &str); 3] = [
    (
        "chatml",
        include_str!("../../../engines/trl/templates/chatml.jinja"),
    ),
    (
        "llama3",
        include_str!("../../../engines/trl/templates/llama3.jinja"),
    ),
    (
        "deepseek-r1",
        include_str!("../../../engines/trl/templates/deepseek-r1.jinja"),
    ),
];

/// Whether `source` has TRL's `{% generation %}` markers (with any whitespace control).
pub fn has_generation_markers(source: &str) -> bool {
    source.match_indices("{%").any(|(at, _)| {
        let rest = source[at + 2..].trim_start_matches('-').trim_start();
        rest.strip_prefix("generation")
            .is_some_and(|after| after.trim_start().starts_with(['%', '-']))
    })
}

/// The plan for `template`, chosen by `choice` (`data.chat_template`).
pub fn plan(choice: &str, template: &ChatTemplate) -> anyhow::Result<Plan> {
    if has_generation_markers(template.source()) {
        return Ok(Plan::Marked);
    }
    for (name, source) in VARIANTS {
        let builtin = ChatTemplate::builtin(name).map(|t| t.source().to_string());
        if builtin.as_deref() == Some(template.source()) {
            return Ok(Plan::Variant { name, source });
        }
    }
    if choice != "auto" {
        anyhow::bail!(
            "the chat template `{choice}` has no `{{% generation %}}` markers around assistant turns, which TRL's assistant-only loss needs: add them (see engines/trl/templates/) or use `auto`, `chatml`, `llama3` or `deepseek-r1`"
        );
    }
    Ok(Plan::LeftToTrl)
}

/// Writes the variant (if any) as `out/chat_template.jinja`; whether it did.
pub fn write(plan: &Plan, out: &Path) -> anyhow::Result<bool> {
    let path = out.join(super::job::CHAT_TEMPLATE);
    match plan {
        Plan::Variant { source, .. } => {
            std::fs::write(&path, source)
                .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", path.display()))?;
            Ok(true)
        }
        _ => {
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|e| anyhow::anyhow!("cannot remove `{}`: {e}", path.display()))?;
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_models::chat::Message;

    const START: char = '\u{E010}';
    const END: char = '\u{E011}';

    /// The variant with its markers made visible: rendered by distill's template engine (which
    /// has no `generation` tag), the labelled span sits between `START` and `END`.
    fn visible(source: &str, builtin: &ChatTemplate) -> ChatTemplate {
        let source = source
            .replace("{%- generation %}", &format!("{{{{- '{START}' }}}}"))
            .replace("{%- endgeneration %}", &format!("{{{{- '{END}' }}}}"));
        ChatTemplate::new(&source, builtin.bos_token(), builtin.eos_token()).unwrap()
    }

    /// For each built-in template and conversation, the variant renders exactly the document
    /// distill trains on: the history as the original renders it with its generation prompt,
    /// then the raw assistant content (after the part the prompt already wrote) and the
    /// end-of-turn token, labelled, and nothing after; with a generation prompt and no answer
    /// it renders as the original.
    #[test]
    fn variants_label_what_distill_trains() {
        let reasoning = "<think>\n3 + 4 = 7, twice.\n</think>\n\nThe answer is \\boxed{7}.  ";
        let conversations = [
            vec![
                Message::user("What is 3 + 4?"),
                Message::assistant(reasoning),
            ],
            vec![
                Message::system("Be brief."),
                Message::user("1 + 1?"),
                Message::assistant("<think>\nsum\n</think>\n\n2"),
                Message::user("What is 3 + 4?"),
                Message::assistant(reasoning),
            ],
        ];
        for (name, source) in VARIANTS {
            let original = ChatTemplate::builtin(name).unwrap();
            let end_of_turn = original.eos_token().unwrap().to_string();
            let marked = visible(source, &original);
            for messages in &conversations {
                let (history, answer) = messages.split_at(messages.len() - 1);
                let prompt = original.render(history, true).unwrap();
                let content = &answer[0].content;
                let written = distill_models::chat::written_by_prompt(&prompt, content);
                let labelled = format!("{}{end_of_turn}", &content[written..]);
                let text = marked.render(messages, false).unwrap();
                assert_eq!(text, format!("{prompt}{START}{labelled}{END}"), "{name}");
                // A prompt alone renders as the original's. (A history with assistant turns,
                // rendered alone, has its own last assistant turn taken for the trained one;
                // TRL's assistant-only loss always renders the whole conversation.)
                if history.iter().all(|m| m.role != "assistant") {
                    assert_eq!(marked.render(history, true).unwrap(), prompt, "{name}");
                }
            }
            assert_eq!(
                plan("auto", &original).unwrap(),
                Plan::Variant { name, source },
                "{name}"
            );
        }
    }

    #[test]
    fn markers_are_found_with_any_whitespace_control() {
        for marked in [
            "{% generation %}x{% endgeneration %}",
            "{%- generation -%}x{%- endgeneration %}",
            "{%-generation%}",
        ] {
            assert!(has_generation_markers(marked), "{marked}");
        }
        for plain in [
            "{{ generation }}",
            "{% generations %}",
            "{% if a %}generation",
        ] {
            assert!(!has_generation_markers(plain), "{plain}");
        }
    }

    #[test]
    fn unmarked_templates() {
        let own = ChatTemplate::new(
            "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            None,
            Some("</s>"),
        )
        .unwrap();
        assert_eq!(plan("auto", &own).unwrap(), Plan::LeftToTrl);
        let err = plan("my.jinja", &own).unwrap_err().to_string();
        assert!(
            err.contains("`my.jinja`") && err.contains("generation"),
            "{err}"
        );
        let marked = ChatTemplate::new(
            "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(plan("my.jinja", &marked).unwrap(), Plan::Marked);
    }
}
