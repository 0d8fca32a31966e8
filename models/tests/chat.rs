//! Chat templates: built-in templates on fixed conversations, HF-compatible Jinja features
//! (raise_exception, loop controls, Python string methods, tojson), and the SmolLM2 template
//! rendered byte-for-byte as transformers' `apply_chat_template` does (reference fixture).

use std::path::PathBuf;

use distill_models::chat::{ChatTemplate, Message};
use distill_models::gguf::GgufCheckpoint;
use distill_models::Error;

fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::user("What is 2+2?")],
        vec![
            Message::system("You are terse."),
            Message::user("Name a prime."),
            Message::assistant("<think>\n2 is prime.\n</think>\n\n2"),
            Message::user("Another?"),
        ],
        vec![Message::user("  Hi  "), Message::assistant("Hello!")],
    ]
}

#[test]
fn chatml_renders_exactly() {
    let t = ChatTemplate::chatml();
    let c = conversations();
    assert_eq!(
        t.render(&c[0], true).unwrap(),
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&c[1], false).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a prime.<|im_end|>\n\
         <|im_start|>assistant\n<think>\n2 is prime.\n</think>\n\n2<|im_end|>\n\
         <|im_start|>user\nAnother?<|im_end|>\n"
    );
    assert_eq!(
        t.render(&c[2], false).unwrap(),
        "<|im_start|>user\n  Hi  <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
    assert_eq!(t.eos_token(), Some("<|im_end|>"));
}

#[test]
fn llama3_renders_exactly() {
    let t = ChatTemplate::llama3();
    let c = conversations();
    assert_eq!(
        t.render(&c[0], true).unwrap(),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(
        t.render(&c[1], true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nName a prime.<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n<think>\n2 is prime.\n</think>\n\n2<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nAnother?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // Llama-3 trims message content.
    assert_eq!(
        t.render(&c[2], false).unwrap(),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    );
}

#[test]
fn deepseek_r1_renders_exactly() {
    let t = ChatTemplate::deepseek_r1();
    let c = conversations();
    assert_eq!(
        t.render(&c[0], true).unwrap(),
        "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    );
    // System prompt right after BOS; reasoning of earlier assistant turns dropped.
    assert_eq!(
        t.render(&c[1], true).unwrap(),
        "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Name a prime.\
         <｜Assistant｜>\n\n2<｜end▁of▁sentence｜><｜User｜>Another?<｜Assistant｜><think>\n"
    );
    assert_eq!(
        t.render(&c[2], false).unwrap(),
        "<｜begin▁of▁sentence｜><｜User｜>  Hi  <｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
    );
}

#[test]
fn builtin_by_name() {
    assert_eq!(
        ChatTemplate::builtin("chatml").unwrap().source(),
        ChatTemplate::chatml().source()
    );
    assert_eq!(
        ChatTemplate::builtin("llama3").unwrap().source(),
        ChatTemplate::llama3().source()
    );
    assert_eq!(
        ChatTemplate::builtin("deepseek-r1").unwrap().source(),
        ChatTemplate::deepseek_r1().source()
    );
    assert!(ChatTemplate::builtin("vicuna").is_none());
}

#[test]
fn raise_exception_becomes_template_error_with_its_message() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
         {{ raise_exception('Conversation roles must be user/assistant, got ' ~ m.role) }}\
         {% endif %}{{ m.content }}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    assert_eq!(t.render(&[Message::user("ok")], false).unwrap(), "ok");
    match t.render(&[Message::new("tool", "x")], false) {
        Err(Error::Template(message)) => {
            assert_eq!(
                message,
                "Conversation roles must be user/assistant, got tool"
            )
        }
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn loop_controls_break_and_continue() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
         {% if m.content == 'STOP' %}{% break %}{% endif %}[{{ m.content }}]{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let messages = [
        Message::system("sys"),
        Message::user("a"),
        Message::assistant("b"),
        Message::user("STOP"),
        Message::assistant("c"),
    ];
    assert_eq!(t.render(&messages, false).unwrap(), "[a][b]");
}

#[test]
fn trim_and_lstrip_blocks_like_hf() {
    // With trim_blocks the newline after a block tag goes; with lstrip_blocks the indentation
    // before one goes. Output text lines keep theirs.
    let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n  U: {{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    let t = ChatTemplate::new(source, None, None).unwrap();
    let out = t
        .render(
            &[
                Message::user("x"),
                Message::assistant("y"),
                Message::user("z"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(out, "  U: x\n  U: z\n");
}

#[test]
fn python_string_methods_and_context() {
    let t = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}|\
         {{ m.content.split(',')[1] | trim }}|{{ m.content.strip().startswith('a') }}\
         {% endfor %}{% if add_generation_prompt %}>{% endif %}{{ eos_token }}\
         {% if tools is none %} no-tools{% endif %}",
        Some("<s>"),
        Some("</s>"),
    )
    .unwrap();
    assert_eq!(
        t.render(&[Message::user("  a, b ")], true).unwrap(),
        "<s>A, B|b|True></s> no-tools"
    );
}

#[test]
fn render_with_extra_variables() {
    let t = ChatTemplate::new(
        "{% if enable_thinking %}think:{% endif %}{{ messages[0].content }}{% if tools %} tools={{ tools | tojson }}{% endif %}",
        None,
        None,
    )
    .unwrap();
    let m = [Message::user("q")];
    assert_eq!(t.render(&m, false).unwrap(), "q");
    assert_eq!(
        t.render_with(&m, false, serde_json::json!({"enable_thinking": true}))
            .unwrap(),
        "think:q"
    );
    // tojson as HF's: Python json.dumps spacing, no HTML escaping, unicode kept.
    let tools = serde_json::json!({"tools": [{"name": "calc", "description": "a<b & 'c' é", "n": 1.5, "k": 3}]});
    assert_eq!(
        t.render_with(&m, false, tools).unwrap(),
        r#"q tools=[{"description": "a<b & 'c' é", "k": 3, "n": 1.5, "name": "calc"}]"#
    );
    let indented = ChatTemplate::new(
        "{{ {'a': [1, 2.0], 'b': none} | tojson(indent=2) }}",
        None,
        None,
    )
    .unwrap()
    .render(&m, false)
    .unwrap();
    assert_eq!(
        indented,
        "{\n  \"a\": [\n    1,\n    2.0\n  ],\n  \"b\": null\n}"
    );
    assert!(matches!(
        t.render_with(&m, false, serde_json::json!([1])),
        Err(Error::Template(_))
    ));
}

#[test]
fn values_print_as_python_does() {
    let t = ChatTemplate::new(
        "{{ true }} {{ none }} {{ [1, 'a', none, false] }} {{ {'k': \"it's\"} }} {{ undefined_var }}.",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        t.render(&[], false).unwrap(),
        "True None [1, 'a', None, False] {'k': \"it's\"} ."
    );
}

#[test]
fn strftime_now_is_available() {
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
    let year: i32 = t.render(&[], false).unwrap().parse().unwrap();
    assert!((2024..3000).contains(&year));
}

#[test]
fn syntax_errors_are_reported_at_compile_time() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("Chat template error: "), "{message}");
    assert!(
        message.contains("endfor") || message.contains("end of input"),
        "{message}"
    );
    let err = ChatTemplate::new("hello\n{{ 1 + }}", None, None).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn smollm2_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Every conversation of the reference renders byte-identically to transformers'
/// `apply_chat_template`, and its tokens match.
#[test]
fn smollm2_template_matches_transformers() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let checkpoint = GgufCheckpoint::open(&smollm2_path()).unwrap();
    let tokenizer = checkpoint.tokenizer().unwrap();
    assert_eq!(
        tokenizer.chat_template.as_deref(),
        reference["chat_template"].as_str()
    );
    let template = tokenizer.chat_template().unwrap().unwrap();
    let cases = reference["chat"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let text = template.render(&messages, add).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{messages:?}");
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tokenizer.encode(&text, false).unwrap(), ids, "{text:?}");
    }
}

/// DeepSeek-R1-Distill-Qwen's published chat template (`r1-distill-qwen/`, see its script).
fn r1_distill_template() -> ChatTemplate {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("r1-distill-qwen/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    ChatTemplate::new(
        config["chat_template"].as_str().unwrap(),
        config["bos_token"]["content"].as_str(),
        config["eos_token"]["content"].as_str(),
    )
    .unwrap()
}

#[test]
fn r1_distill_template_renders_like_jinja2() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("r1-distill-qwen/reference.json")).unwrap(),
    )
    .unwrap();
    let template = r1_distill_template();
    let cases = reference.as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let text = template.render(&messages, add).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{messages:?}");
    }
}

/// R1-Distill's template opens the think block itself: the default prefill must not open it
/// again (`<think>\n<think>\n` is a prompt the model never saw).
#[test]
fn generation_prompt_opens_the_think_block_once() {
    let messages = [Message::user("What is 2+2?")];
    for template in [r1_distill_template(), ChatTemplate::deepseek_r1()] {
        let prompt = template.generation_prompt(&messages, "<think>\n").unwrap();
        assert_eq!(
            prompt,
            "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
        );
        assert_eq!(prompt.matches("<think>").count(), 1, "{prompt:?}");
        // Without a prefill the template's own generation prompt is the prompt.
        assert_eq!(
            template.generation_prompt(&messages, "").unwrap(),
            template.render(&messages, true).unwrap()
        );
    }
    // A template that does not open it gets the prefill appended.
    assert_eq!(
        ChatTemplate::chatml()
            .generation_prompt(&messages, "<think>\n")
            .unwrap(),
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    );
}

#[test]
fn written_by_prompt_finds_the_overlap_with_the_turn() {
    use distill_models::chat::written_by_prompt;
    assert_eq!(
        written_by_prompt("<｜Assistant｜><think>\n", "<think>\n"),
        8
    );
    assert_eq!(
        written_by_prompt("<｜Assistant｜><think>\n", "<think>\nOkay"),
        8
    );
    // A template that opens the tag without its newline: only the newline is left to add.
    assert_eq!(written_by_prompt("assistant\n<think>", "<think>\n"), 7);
    // A shared newline alone is not the template writing the turn.
    assert_eq!(
        written_by_prompt("<|im_start|>assistant\n", "\n<think>\n"),
        0
    );
    assert_eq!(written_by_prompt("<|im_start|>assistant\n", "<think>\n"), 0);
    assert_eq!(written_by_prompt("", "<think>\n"), 0);
    assert_eq!(written_by_prompt("<think>\n", ""), 0);
    // Overlaps end on character boundaries.
    assert_eq!(written_by_prompt("ab｜", "｜c"), "｜".len());
}
