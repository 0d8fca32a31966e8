//! An ollama `Modelfile` for a GGUF file: `FROM` the file, the chat template translated into
//! ollama's Go-template syntax, a `stop` for every end-of-turn token, and DeepSeek-R1's sampling
//! defaults (temperature 0.6, top-p 0.95).
//!
//! Jinja cannot be translated in general, so the translation covers three conversation layouts
//! (ChatML, Llama 3, DeepSeek-R1) and is checked: the model's own template and the translation
//! are both rendered on probe conversations, and the `TEMPLATE` is written only when every
//! rendering is identical. Otherwise the Modelfile says why and leaves the template to ollama,
//! which picks one from the GGUF's `tokenizer.chat_template` when it knows it.

use std::path::Path;

use super::GgufCheckpoint;
use crate::chat::{ChatTemplate, Message};
use crate::Result;

/// A conversation layout: the text around each role's content.
#[derive(Debug)]
struct Layout {
    name: &'static str,
    /// Text only this layout's templates contain.
    marker: &'static str,
    system: (&'static str, &'static str),
    user: (&'static str, &'static str),
    assistant: (&'static str, &'static str),
    /// Opens the assistant turn the model writes (a template may add to it, e.g. `<think>\n`).
    generation: &'static str,
    end_of_turn: &'static str,
}

const LAYOUTS: &[Layout] = &[
    Layout {
        name: "ChatML",
        marker: "<|im_start|>",
        system: ("<|im_start|>system\n", "<|im_end|>\n"),
        user: ("<|im_start|>user\n", "<|im_end|>\n"),
        assistant: ("<|im_start|>assistant\n", "<|im_end|>\n"),
        generation: "<|im_start|>assistant\n",
        end_of_turn: "<|im_end|>",
    },
    Layout {
        name: "Llama 3",
        marker: "<|start_header_id|>",
        system: (
            "<|start_header_id|>system<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
        user: ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant: (
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
        generation: "<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn: "<|eot_id|>",
    },
    Layout {
        name: "DeepSeek-R1",
        marker: "<｜Assistant｜>",
        system: ("", ""),
        user: ("<｜User｜>", ""),
        assistant: ("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
        generation: "<｜Assistant｜>",
        end_of_turn: "<｜end▁of▁sentence｜>",
    },
];

/// A Modelfile and what went into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Modelfile {
    pub text: String,
    /// The conversation layout the `TEMPLATE` was written for (`None`: no `TEMPLATE`).
    pub layout: Option<&'static str>,
    /// Why no `TEMPLATE` was written, when none was.
    pub note: Option<String>,
}

/// The Modelfile for the GGUF file at `gguf`; `from` is what its `FROM` line says (a path
/// relative to the Modelfile, e.g. `./student.Q4_K_M.gguf`).
pub fn modelfile_for(gguf: &Path, from: &str) -> Result<Modelfile> {
    let file = GgufCheckpoint::open(gguf)?;
    let tokenizer = file.tokenizer()?;
    let add_bos = file
        .metadata("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let eos: Vec<String> = file
        .generation_config()
        .eos_token_ids()
        .into_iter()
        .filter_map(|id| tokenizer.inner.id_to_token(id))
        .collect();
    let template = tokenizer.chat_template()?;
    let translated = match &template {
        None => Err("the GGUF has no chat template".to_string()),
        Some(template) => translate(template, add_bos),
    };

    let mut text = format!(
        "# ollama Modelfile written by `distill export`; load it with\n\
         #   ollama create NAME -f THIS_FILE\nFROM {from}\n"
    );
    let mut stops: Vec<String> = Vec::new();
    let (layout, note) = match translated {
        Ok((layout, go_template)) => {
            if layout.name == "DeepSeek-R1" {
                text.push_str(
                    "# The model's own template drops the reasoning (up to </think>) from earlier \
                     assistant turns;\n# this one keeps what ollama passes in each turn's \
                     content.\n",
                );
            }
            text.push_str(&format!("TEMPLATE \"\"\"{go_template}\"\"\"\n"));
            stops.push(layout.end_of_turn.to_string());
            (Some(layout.name), None)
        }
        Err(reason) => {
            text.push_str(&format!(
                "# No TEMPLATE: {reason}. ollama then picks one from the GGUF's \
                 tokenizer.chat_template when it recognises it.\n"
            ));
            (None, Some(reason))
        }
    };
    for token in eos {
        if !stops.contains(&token) {
            stops.push(token);
        }
    }
    for stop in &stops {
        text.push_str(&format!("PARAMETER stop \"{stop}\"\n"));
    }
    text.push_str("PARAMETER temperature 0.6\nPARAMETER top_p 0.95\n");
    Ok(Modelfile { text, layout, note })
}

/// What a template, once its layout is known, puts around the conversation.
#[derive(Debug, Clone, PartialEq)]
struct Translation {
    /// BOS written by the template itself (kept only when the tokenizer does not add it).
    bos: String,
    /// Goes before the content of every system message (Llama 3.1's date lines).
    system_prefix: String,
    /// The whole system content when the conversation has no system message.
    default_system: Option<String>,
    /// Opens the assistant turn the model writes.
    generation: String,
}

/// The Go template for `template`, or why there is none.
fn translate(
    template: &ChatTemplate,
    add_bos: bool,
) -> std::result::Result<(&'static Layout, String), String> {
    let layout = LAYOUTS
        .iter()
        .find(|l| template.source().contains(l.marker))
        .ok_or("the chat template is none of ChatML, Llama 3, DeepSeek-R1")?;
    let unknown = |what: &str| format!("the {} chat template {what}", layout.name);
    let render =
        |messages: &[Message], generation: bool| -> std::result::Result<(String, bool), String> {
            let text = template
                .render(messages, generation)
                .map_err(|e| format!("the chat template does not render: {e}"))?;
            // Only a template that writes `bos_token` starts with BOS (SmolLM2's BOS is
            // `<|im_start|>`, which its ChatML turns start with anyway).
            let writes_bos = template.source().contains("bos_token");
            Ok(
                match template.bos_token().filter(|b| !b.is_empty() && writes_bos) {
                    Some(bos) if text.starts_with(bos) => (text[bos.len()..].to_string(), true),
                    _ => (text, false),
                },
            )
        };
    let hi = [Message::user("Hi")];
    let (closed, bos_written) = render(&hi, false)?;
    let (open, _) = render(&hi, true)?;
    let generation = open
        .strip_prefix(closed.as_str())
        .filter(|g| g.starts_with(layout.generation))
        .ok_or_else(|| unknown("opens the assistant turn differently"))?
        .to_string();
    let user_turn = format!("{}Hi{}", layout.user.0, layout.user.1);
    let before_user = closed
        .strip_suffix(user_turn.as_str())
        .ok_or_else(|| unknown("writes the user turn differently"))?;
    let system_content = |block: &str| -> Option<String> {
        block
            .strip_prefix(layout.system.0)?
            .strip_suffix(layout.system.1)
            .map(str::to_string)
    };
    let default_system = match before_user {
        "" => None,
        block => Some(
            system_content(block)
                .ok_or_else(|| unknown("writes text before the first user turn"))?,
        ),
    };
    let marker = "\u{1}system\u{1}";
    let (with_system, _) = render(&[Message::system(marker), Message::user("Hi")], false)?;
    let system_prefix = with_system
        .strip_suffix(user_turn.as_str())
        .and_then(system_content)
        .and_then(|content| content.strip_suffix(marker).map(str::to_string))
        .ok_or_else(|| unknown("writes the system message differently"))?;
    let bos = match (bos_written, add_bos, template.bos_token()) {
        (true, false, Some(bos)) => bos.to_string(),
        _ => String::new(),
    };
    let translation = Translation {
        bos,
        system_prefix,
        default_system,
        generation,
    };

    let probes: [&[Message]; 4] = [
        &[Message::user("What is 2+2?")],
        &[Message::system("Be brief."), Message::user("Hi")],
        &[
            Message::user("Hi"),
            Message::assistant("Hello."),
            Message::user("Name a prime."),
        ],
        &[
            Message::system("You are terse."),
            Message::user("Hi"),
            Message::assistant("Hello."),
            Message::user("Bye."),
        ],
    ];
    for probe in probes {
        let (expected, _) = render(probe, true)?;
        let expected = format!(
            "{}{expected}",
            if bos_written && !add_bos {
                translation.bos.as_str()
            } else {
                ""
            }
        );
        let ours = render_layout(layout, &translation, probe);
        if ours != expected {
            return Err(unknown(&format!(
                "renders {expected:?} where the {} layout gives {ours:?}",
                layout.name
            )));
        }
    }
    Ok((layout, go_template(layout, &translation)))
}

/// What [`go_template`] renders for `messages`, in Rust, to compare with the Jinja template.
fn render_layout(layout: &Layout, t: &Translation, messages: &[Message]) -> String {
    let mut out = t.bos.clone();
    if let Some(default) = &t.default_system {
        if messages.first().is_none_or(|m| m.role != "system") {
            out += &format!("{}{default}{}", layout.system.0, layout.system.1);
        }
    }
    for (i, m) in messages.iter().enumerate() {
        let last = i + 1 == messages.len();
        match m.role.as_str() {
            "system" => {
                out += &format!(
                    "{}{}{}{}",
                    layout.system.0, t.system_prefix, m.content, layout.system.1
                )
            }
            "user" => out += &format!("{}{}{}", layout.user.0, m.content, layout.user.1),
            "assistant" => {
                out += layout.assistant.0;
                out += &m.content;
                if !last {
                    out += layout.assistant.1;
                }
            }
            _ => {}
        }
        if last && m.role != "assistant" {
            out += &t.generation;
        }
    }
    out
}

/// The layout as an ollama Go template over `.Messages`, on one line: Go templates keep every
/// character outside `{{ }}`, so the only newlines are the layout's own.
fn go_template(layout: &Layout, t: &Translation) -> String {
    let mut out = t.bos.clone();
    if let Some(default) = &t.default_system {
        // `index` fails on an empty list: only a conversation gets the default system turn.
        out += &format!(
            "{{{{ if .Messages }}}}{{{{ if ne (index .Messages 0).Role \"system\" }}}}{}{default}{}\
             {{{{ end }}}}{{{{ end }}}}",
            layout.system.0, layout.system.1
        );
    }
    out += "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}";
    out += &format!(
        "{{{{ if eq .Role \"system\" }}}}{}{}{{{{ .Content }}}}{}",
        layout.system.0, t.system_prefix, layout.system.1
    );
    out += &format!(
        "{{{{ else if eq .Role \"user\" }}}}{}{{{{ .Content }}}}{}",
        layout.user.0, layout.user.1
    );
    out += &format!(
        "{{{{ else if eq .Role \"assistant\" }}}}{}{{{{ .Content }}}}{{{{ if not $last }}}}{}{{{{ end }}}}{{{{ end }}}}",
        layout.assistant.0, layout.assistant.1
    );
    out += &format!(
        "{{{{ if and $last (ne .Role \"assistant\") }}}}{}{{{{ end }}}}{{{{ end }}}}",
        t.generation
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(template: &ChatTemplate, add_bos: bool) -> (String, String) {
        let (layout, go) = translate(template, add_bos).unwrap();
        (layout.name.to_string(), go)
    }

    #[test]
    fn chatml_translates() {
        let (name, go) = translated(&ChatTemplate::chatml(), false);
        assert_eq!(name, "ChatML");
        assert_eq!(
            go,
            "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}\
             {{ if eq .Role \"system\" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n\
             {{ else if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n\
             {{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ .Content }}\
             {{ if not $last }}<|im_end|>\n{{ end }}{{ end }}\
             {{ if and $last (ne .Role \"assistant\") }}<|im_start|>assistant\n{{ end }}{{ end }}"
        );
    }

    #[test]
    fn default_system_prompt_and_llama3_bos() {
        // SmolLM2 / Qwen2.5 inject a system message when the conversation has none.
        let source = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        // SmolLM2's BOS is `<|im_start|>`: not a BOS the template writes.
        let template = ChatTemplate::new(source, Some("<|im_start|>"), Some("<|im_end|>")).unwrap();
        let (_, go) = translated(&template, false);
        assert!(go.starts_with(
            "{{ if .Messages }}{{ if ne (index .Messages 0).Role \"system\" }}<|im_start|>system\n\
             You are helpful.<|im_end|>\n{{ end }}{{ end }}{{ range"
        ));
        // Llama 3 writes BOS itself: kept only for a tokenizer that does not add it.
        let (name, go) = translated(&ChatTemplate::llama3(), true);
        assert_eq!(name, "Llama 3");
        assert!(go.starts_with("{{ range"), "{go}");
        let (_, go) = translated(&ChatTemplate::llama3(), false);
        assert!(go.starts_with("<|begin_of_text|>{{ range"), "{go}");
    }

    #[test]
    fn deepseek_r1_keeps_the_think_prefill() {
        let (name, go) = translated(&ChatTemplate::deepseek_r1(), true);
        assert_eq!(name, "DeepSeek-R1");
        assert!(
            go.ends_with("{{ if and $last (ne .Role \"assistant\") }}<｜Assistant｜><think>\n{{ end }}{{ end }}"),
            "{go}"
        );
    }

    #[test]
    fn unknown_templates_are_left_to_ollama() {
        let template = ChatTemplate::new(
            "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            translate(&template, false).unwrap_err(),
            "the chat template is none of ChatML, Llama 3, DeepSeek-R1"
        );
        // ChatML markers but another layout: the probes catch it.
        let odd = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>\n{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert!(translate(&odd, false).is_err());
    }
}
