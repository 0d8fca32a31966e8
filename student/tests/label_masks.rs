//! Label masks: only the last assistant turn and its end-of-turn token are targets, whatever the
//! template does to assistant content; rows that cannot train are dropped and counted.

mod label_support;

use distill_models::chat::{ChatTemplate, Message};
use distill_student::batch::IGNORE;
use distill_student::data::{self, Conversation, DataConfig, DropReason, Overlong, Renderer};
use label_support::*;

fn conv(id: &str, messages: Vec<Message>) -> Conversation {
    Conversation {
        id: id.into(),
        problem_id: None,
        messages,
        finish_reason: None,
        reference_answer: None,
        teacher_logprobs: None,
    }
}

fn two_plus_three() -> Vec<Message> {
    vec![
        Message::user("2+3"),
        Message::assistant("<think>\n5\n</think>\n\n5"),
    ]
}

fn chatml_renderer() -> Renderer {
    Renderer::new(tiny_tokenizer(&[]), ChatTemplate::chatml(), &[IM_END]).unwrap()
}

#[test]
fn chatml_labels_are_exact() {
    let r = chatml_renderer();
    assert_eq!(r.end_of_turn_id(), Some(IM_END));
    let rendered = r.render(&two_plus_three()).unwrap();
    assert!(!rendered.offset_fallback && !rendered.appended_eos);
    let (doc, truncated) = rendered.into_document(64, Overlong::Drop).unwrap();
    assert!(!truncated);

    let mut prompt = vec![IM_START];
    prompt.extend(word("user"));
    prompt.extend([NL, digit(2), PLUS, digit(3), IM_END, NL, IM_START]);
    prompt.extend(word("assistant"));
    prompt.push(NL);
    // The trailing "\n" after `<|im_end|>` is not part of the document: the turn ends at EOS.
    let answer = vec![THINK, NL, digit(5), NL, END_THINK, NL, NL, digit(5), IM_END];
    let ids: Vec<u32> = prompt.iter().chain(&answer).copied().collect();
    assert_eq!(doc.input_ids, ids);

    // labels[i] = ids[i + 1] for every answer token, the first predicted from the prompt's
    // last position; nothing on prompt targets; nothing after the EOS.
    let mut labels = vec![IGNORE; prompt.len() - 1];
    labels.extend(answer.iter().map(|&t| t as i64));
    labels.push(IGNORE);
    assert_eq!(doc.labels, labels);
    assert_eq!(doc.labels[doc.len() - 2], IM_END as i64, "EOS is a target");
}

#[test]
fn prompt_tokens_contribute_nothing() {
    let r = chatml_renderer();
    let a = r.render(&two_plus_three()).unwrap();
    let mut other = two_plus_three();
    other[0].content = "7+1".into();
    let b = r.render(&other).unwrap();
    let (a, _) = a.into_document(64, Overlong::Drop).unwrap();
    let (b, _) = b.into_document(64, Overlong::Drop).unwrap();
    // Same answer after a different prompt: identical label sequences, prompt positions ignored.
    assert_ne!(a.input_ids, b.input_ids);
    assert_eq!(a.labels, b.labels);
    let first = a.labels.iter().position(|&l| l != IGNORE).unwrap();
    assert_eq!(
        a.input_ids[first], NL,
        "the first target follows `assistant\\n`"
    );
    assert_eq!(a.labels[first], THINK as i64);
}

#[test]
fn only_the_last_assistant_turn_is_trained() {
    let r = chatml_renderer();
    let messages = vec![
        Message::user("1+5"),
        Message::assistant("6"),
        Message::user("2+3"),
        Message::assistant("<think>\n5\n</think>\n\n5"),
    ];
    let (doc, _) = r
        .render(&messages)
        .unwrap()
        .into_document(128, Overlong::Drop)
        .unwrap();
    let targets: Vec<u32> = doc
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(
        targets,
        vec![THINK, NL, digit(5), NL, END_THINK, NL, NL, digit(5), IM_END]
    );
    // The earlier assistant turn ("6") is in the input as history.
    assert!(doc.input_ids.windows(2).any(|w| w == [NL, digit(6)]));
    assert_eq!(
        doc.labels.iter().filter(|&&l| l == digit(6) as i64).count(),
        0
    );
}

/// A ChatML variant that, like DeepSeek-R1-Distill's, keeps only what follows `</think>` in
/// every assistant message.
const STRIPPING: &str = "{%- for m in messages %}{%- set c = m['content'] %}\
{%- if m['role'] == 'assistant' and '</think>' in c %}{%- set c = c.split('</think>')[-1] %}{%- endif %}\
{{- '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

#[test]
fn a_template_that_strips_reasoning_keeps_it_in_the_trained_turn() {
    let template = ChatTemplate::new(STRIPPING, None, Some("<|im_end|>")).unwrap();
    let r = Renderer::new(tiny_tokenizer(&[]), template.clone(), &[IM_END]).unwrap();
    let messages = vec![
        Message::user("1+1"),
        Message::assistant("<think>\n2\n</think>\n\n2"),
        Message::user("2+3"),
        Message::assistant("<think>\n5\n</think>\n\n5"),
    ];
    // The template itself drops the reasoning of both turns...
    let plain = template.render(&messages, false).unwrap();
    assert!(!plain.contains("<think>"), "{plain}");
    let (doc, _) = r
        .render(&messages)
        .unwrap()
        .into_document(128, Overlong::Drop)
        .unwrap();
    let text = r.tokenizer().decode(&doc.input_ids, false).unwrap();
    // ...but the trained turn keeps it, and the history turn is shown as the template shows it.
    assert!(
        text.ends_with("<|im_start|>assistant\n<think>\n5\n</think>\n\n5<|im_end|>"),
        "{text}"
    );
    assert_eq!(text.matches("<think>").count(), 1, "{text}");
    let first = doc.labels.iter().position(|&l| l != IGNORE).unwrap();
    assert_eq!(doc.labels[first], THINK as i64);
}

#[test]
fn a_generation_prompt_that_prefills_think_is_not_repeated() {
    let template = "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}";
    let template = ChatTemplate::new(template, None, Some("<|im_end|>")).unwrap();
    let r = Renderer::new(tiny_tokenizer(&[]), template, &[IM_END]).unwrap();
    let rendered = r.render(&two_plus_three()).unwrap();
    let (doc, _) = rendered.into_document(64, Overlong::Drop).unwrap();
    let text = r.tokenizer().decode(&doc.input_ids, false).unwrap();
    assert!(
        text.ends_with("assistant\n<think>\n5\n</think>\n\n5<|im_end|>"),
        "{text}"
    );
    // `<think>\n` belongs to the prompt: the first target is the reasoning itself.
    let targets: Vec<u32> = doc
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(
        targets,
        vec![digit(5), NL, END_THINK, NL, NL, digit(5), IM_END]
    );
}

/// DeepSeek-R1-Distill-Qwen's published template (its generation prompt ends `<think>\n`): the
/// trained document's prompt is exactly the prompt generation and evaluation build with the
/// default prefill, with one `<think>\n`, and the first target is the reasoning.
#[test]
fn r1_distill_training_prompt_equals_the_generation_prompt() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/r1-distill-qwen/tokenizer_config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (bos, eos) = (
        config["bos_token"]["content"].as_str().unwrap(),
        config["eos_token"]["content"].as_str().unwrap(),
    );
    let template = ChatTemplate::new(
        config["chat_template"].as_str().unwrap(),
        Some(bos),
        Some(eos),
    )
    .unwrap();
    let mut tokenizer = tiny_tokenizer(&[]);
    let markers = [bos, eos, "<｜User｜>", "<｜Assistant｜>"]
        .map(|t| tokenizers::AddedToken::from(t.to_string(), true));
    assert_eq!(tokenizer.inner.add_special_tokens(markers).unwrap(), 4);
    let eos_id = tokenizer.token_id(eos).unwrap();
    let r = Renderer::new(tokenizer, template.clone(), &[eos_id]).unwrap();

    let messages = two_plus_three();
    let (doc, _) = r
        .render(&messages)
        .unwrap()
        .into_document(64, Overlong::Drop)
        .unwrap();
    let text = r.tokenizer().decode(&doc.input_ids, false).unwrap();
    let prompt = template
        .generation_prompt(&messages[..1], "<think>\n")
        .unwrap();
    assert_eq!(text, format!("{prompt}5\n</think>\n\n5{eos}"));
    assert_eq!(text.matches("<think>").count(), 1, "{text}");
    let first = doc.labels.iter().position(|&l| l != IGNORE).unwrap();
    let prompt_ids = r.tokenizer().encode(&prompt, false).unwrap();
    assert_eq!(
        first + 1,
        prompt_ids.len(),
        "labels start right after the prompt"
    );
    assert_eq!(doc.labels[first], digit(5) as i64);
}

#[test]
fn a_merge_across_the_prompt_boundary_falls_back_to_offsets() {
    // The role is glued to the content ("assistant" with no newline) and the answer
    // starts with "s": the merge `t`+`s` spans the boundary, so the prompt's tokens are not a
    // prefix of the document's.
    let template = "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + m['content'] + '<|im_end|>\\n' }}{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant' }}{%- endif %}";
    let template = ChatTemplate::new(template, None, Some("<|im_end|>")).unwrap();
    let tokenizer = tiny_tokenizer(&[("t", "s")]);
    let ts = tokenizer.token_id("ts").unwrap();
    let r = Renderer::new(tokenizer, template, &[IM_END]).unwrap();
    let messages = vec![Message::user("2+3"), Message::assistant("s5")];
    let rendered = r.render(&messages).unwrap();
    assert!(rendered.offset_fallback);
    let (doc, _) = rendered.into_document(64, Overlong::Drop).unwrap();
    let targets: Vec<u32> = doc
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    // The token straddling the boundary is trained (it holds answer text), then the rest.
    assert_eq!(targets, vec![ts, digit(5), IM_END]);
}

#[test]
fn eos_is_appended_when_the_template_has_no_end_of_turn() {
    let template =
        "{%- for m in messages %}{{- m['role'] + '\\n' + m['content'] + '\\n' }}{%- endfor %}\
{%- if add_generation_prompt %}{{- 'assistant\\n' }}{%- endif %}";
    let template = ChatTemplate::new(template, None, None).unwrap();
    let r = Renderer::new(tiny_tokenizer(&[]), template, &[IM_END]).unwrap();
    let rendered = r.render(&two_plus_three()).unwrap();
    assert!(rendered.appended_eos);
    let (doc, _) = rendered.into_document(64, Overlong::Drop).unwrap();
    assert_eq!(doc.input_ids.last(), Some(&IM_END));
    assert_eq!(doc.labels[doc.len() - 2], IM_END as i64);
    let targets: Vec<u32> = doc
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(
        targets,
        vec![
            THINK,
            NL,
            digit(5),
            NL,
            END_THINK,
            NL,
            NL,
            digit(5),
            NL,
            IM_END
        ]
    );
}

#[test]
fn overlong_rows_are_dropped_or_truncated() {
    let r = chatml_renderer();
    let rendered = r.render(&two_plus_three()).unwrap();
    let n = rendered.input_ids.len();
    assert_eq!(
        rendered
            .clone()
            .into_document(n - 1, Overlong::Drop)
            .unwrap_err(),
        DropReason::TooLong
    );
    let (doc, truncated) = rendered
        .clone()
        .into_document(n - 3, Overlong::Truncate)
        .unwrap();
    assert!(truncated);
    assert_eq!(doc.len(), n - 3);
    assert_eq!(doc.labels.last(), Some(&IGNORE));
    assert_eq!(
        rendered.into_document(10, Overlong::Truncate).unwrap_err(),
        DropReason::PromptTooLong
    );
}

#[test]
fn unusable_corpora_say_why() {
    let r = chatml_renderer();
    let config = DataConfig {
        max_seq_len: 8,
        eval_fraction: 0.0,
        ..Default::default()
    };
    let rows = vec![conv("a", two_plus_three()), conv("b", two_plus_three())];
    let err = data::build(&rows, &r, &config).unwrap_err().to_string();
    assert!(err.contains("all `2` corpus rows were dropped"), "{err}");
    assert!(err.contains("`2` were longer than `max_seq_len`"), "{err}");
    assert!(err.contains("data.max_seq_len"), "{err}");

    let mut cut = conv("c", two_plus_three());
    cut.finish_reason = Some("length".into());
    let rows = vec![cut, conv("d", vec![Message::user("2+3")])];
    let err = data::build(&rows, &r, &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`1` had no assistant turn"), "{err}");
    assert!(
        err.contains("`1` were cut off by the teacher's token limit"),
        "{err}"
    );
}

#[test]
fn build_counts_and_packs() {
    let r = chatml_renderer();
    let rows: Vec<Conversation> = (0..6)
        .map(|i| {
            let mut m = two_plus_three();
            m[0].content = format!("{i}+3");
            conv(&format!("p{i}/0"), m)
        })
        .chain([conv("empty", vec![Message::user("1")])])
        .collect();
    let config = DataConfig {
        max_seq_len: 64,
        eval_fraction: 0.0,
        ..Default::default()
    };
    let ds = data::build(&rows, &r, &config).unwrap();
    assert_eq!(ds.report.rows, 7);
    assert_eq!(ds.report.train_documents, 6);
    assert_eq!(ds.report.dropped.get("no_assistant_turn"), Some(&1));
    // 31-token documents: two per 64-token row.
    assert_eq!(ds.train.len(), 3);
    assert_eq!(ds.report.train_tokens, 6 * 31);
    assert_eq!(ds.report.train_label_tokens, 6 * 9);
    let unpacked = data::build(
        &rows,
        &r,
        &DataConfig {
            packing: false,
            ..config
        },
    )
    .unwrap();
    assert_eq!(unpacked.train.len(), 6);
}

/// The problem a one-document row of `two_plus_three`-shaped conversations answers: its user
/// text, decoded.
fn row_problem(r: &Renderer, row: &distill_student::batch::PackedRow) -> String {
    let text = r.tokenizer().decode(&row.input_ids, false).unwrap();
    let user = text.split("<|im_start|>user\n").nth(1).unwrap();
    user.split("<|im_end|>").next().unwrap().to_string()
}

/// The held-out split is by problem: every sample of a problem is on one side, the split is
/// the same on every build, and about `eval_fraction` of the problems are held out.
#[test]
fn held_out_split_is_by_problem() {
    let r = chatml_renderer();
    let (problems, samples) = (300, 4);
    let mut rows: Vec<Conversation> = Vec::new();
    for p in 0..problems {
        for s in 0..samples {
            let mut m = two_plus_three();
            m[0].content = format!("{p}+{s}");
            // Half the rows carry a `problem_id` column, the rest only the `{problem}/{index}` id.
            let mut c = conv(&format!("q{p}/{s}"), m);
            if p % 2 == 0 {
                c.id = format!("row-{p}-{s}");
                c.problem_id = Some(format!("q{p}"));
            }
            rows.push(c);
        }
    }
    let config = DataConfig {
        max_seq_len: 64,
        packing: false,
        eval_fraction: 0.2,
        ..Default::default()
    };
    let ds = data::build(&rows, &r, &config).unwrap();
    let problem_of = |row| {
        let user = row_problem(&r, row);
        user.split('+').next().unwrap().parse::<usize>().unwrap()
    };
    let eval: std::collections::BTreeSet<usize> = ds.eval.iter().map(problem_of).collect();
    let train: std::collections::BTreeSet<usize> = ds.train.iter().map(problem_of).collect();
    assert!(eval.is_disjoint(&train), "{:?}", eval.intersection(&train));
    assert_eq!(eval.len() + train.len(), problems);
    assert_eq!(ds.eval.len(), eval.len() * samples);
    assert_eq!(ds.train.len(), train.len() * samples);
    // 20% of 300 problems: 60, binomial sd about 7.
    assert!((40..=80).contains(&eval.len()), "{} held out", eval.len());
    // Deterministic: a rebuild (and a shuffled corpus) holds out the same problems.
    rows.reverse();
    let again = data::build(&rows, &r, &config).unwrap();
    let eval_again: std::collections::BTreeSet<usize> = again.eval.iter().map(problem_of).collect();
    assert_eq!(eval, eval_again);
}

#[test]
fn problem_key_reads_the_column_then_the_id() {
    let mut c = conv("gsm8k-12/3", two_plus_three());
    assert_eq!(c.problem_key(), "gsm8k-12");
    c.id = "a/b/10".into();
    assert_eq!(c.problem_key(), "a/b");
    c.id = "no-index".into();
    assert_eq!(c.problem_key(), "no-index");
    c.id = "trailing/".into();
    assert_eq!(c.problem_key(), "trailing/");
    c.problem_id = Some("p7".into());
    assert_eq!(c.problem_key(), "p7");
}
