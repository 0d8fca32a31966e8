//! From-scratch tokenizers (digits split, merges across words on request, round trips, single-id special tokens, HF folder
//! round trip) and reading conversations from corpus shards.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use distill_corpus::record::{self, Record};
use distill_corpus::shards::{ShardWriter, WriterOptions};
use distill_models::chat::{ChatTemplate, Message};
use distill_models::tokenizer::TextTokenizer;
use distill_student::data::{self, Renderer};
use distill_student::tokenizer_train::{self, TokenizerTrainConfig};

fn corpus_texts() -> Vec<String> {
    (0..60)
        .map(|i| {
            let (a, b) = (5 + i % 30, 2 + i % 17);
            format!(
                "Tom has {a} apples and buys {b} more. How many apples now?\n\
                 <think>\n{a} + {b} = {}\n</think>\n\nThe answer is \\boxed{{{}}}.",
                a + b,
                a + b
            )
        })
        .collect()
}

fn train(vocab_size: usize, split_digits: bool) -> TextTokenizer {
    tokenizer_train::train(
        corpus_texts(),
        &TokenizerTrainConfig {
            vocab_size,
            split_digits,
            min_frequency: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn digits_are_single_tokens() {
    let t = train(300, true);
    for text in ["12345", " 987 apples", "x=1024;"] {
        let ids = t.encode(text, false).unwrap();
        for id in &ids {
            let piece = t.decode(&[*id], false).unwrap();
            let digits = piece.chars().filter(char::is_ascii_digit).count();
            assert!(digits <= 1, "token {id} `{piece}` holds {digits} digits");
        }
    }
    // Without the digit splitter, BPE merges frequent numbers: the splitter is what keeps
    // digits apart.
    let merged = train(1000, false);
    let multi_digit = corpus_texts().iter().any(|text| {
        merged.encode(text, false).unwrap().iter().any(|id| {
            let piece = merged.decode(&[*id], false).unwrap();
            piece.chars().filter(char::is_ascii_digit).count() >= 2
        })
    });
    assert!(multi_digit);
}

#[test]
fn merges_span_words_only_when_asked() {
    let texts = corpus_texts();
    let config = |merge_across_words| TokenizerTrainConfig {
        vocab_size: 400,
        merge_across_words,
        ..Default::default()
    };
    let words = tokenizer_train::train(&texts, &config(false)).unwrap();
    let phrases = tokenizer_train::train(&texts, &config(true)).unwrap();
    // A piece spans words when a space sits anywhere but at its start.
    let spans_words = |t: &TextTokenizer, text: &str| {
        t.encode(text, false).unwrap().iter().any(|id| {
            let piece = t.decode(&[*id], false).unwrap();
            piece.trim_start().contains(' ')
        })
    };
    let (mut word_ids, mut phrase_ids) = (0, 0);
    for text in &texts {
        assert!(!spans_words(&words, text), "{text}");
        for t in [&words, &phrases] {
            let ids = t.encode(text, false).unwrap();
            assert_eq!(&t.decode(&ids, false).unwrap(), text);
            for id in &ids {
                let piece = t.decode(&[*id], false).unwrap();
                assert!(
                    piece.chars().filter(char::is_ascii_digit).count() <= 1,
                    "{piece}"
                );
            }
        }
        word_ids += words.encode(text, false).unwrap().len();
        phrase_ids += phrases.encode(text, false).unwrap().len();
    }
    assert!(spans_words(&phrases, &texts[0]));
    // The templated text is much shorter in phrase tokens.
    assert!(
        (phrase_ids as f64) < 0.8 * word_ids as f64,
        "{phrase_ids} vs {word_ids}"
    );
}

#[test]
fn corpus_text_round_trips_and_specials_are_single_ids() {
    for vocab in [80, 400] {
        let t = train(vocab, true);
        assert!(t.vocab_size() <= vocab, "{} > {vocab}", t.vocab_size());
        for text in corpus_texts().iter().take(10) {
            let ids = t.encode(text, false).unwrap();
            assert_eq!(&t.decode(&ids, false).unwrap(), text);
        }
        for token in [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<think>",
            "</think>",
        ] {
            let id = t.token_id(token).unwrap();
            assert_eq!(t.encode(token, false).unwrap(), vec![id], "{token}");
            assert_eq!(
                t.encode(&format!("a{token}b"), false).unwrap()[1],
                id,
                "{token} inside text"
            );
        }
        // <think> survives skip_special_tokens (the teacher's answer parser needs it);
        // the ChatML markers do not.
        let rendered = ChatTemplate::chatml()
            .render(&[Message::assistant("<think>\n1\n</think>\n\n1")], false)
            .unwrap();
        let ids = t.encode(&rendered, false).unwrap();
        let skipped = t.decode(&ids, true).unwrap();
        assert!(
            skipped.contains("<think>") && !skipped.contains("<|im_start|>"),
            "{skipped}"
        );
    }
}

#[test]
fn small_vocabularies_cover_the_corpus_alphabet_only() {
    let t = train(80, true);
    // Every corpus character is encodable...
    let text = &corpus_texts()[3];
    assert_eq!(
        &t.decode(&t.encode(text, false).unwrap(), false).unwrap(),
        text
    );
    // ...a large vocabulary covers every byte.
    let big = train(400, true);
    let odd = "ü€ QZ";
    assert_eq!(
        big.decode(&big.encode(odd, false).unwrap(), false).unwrap(),
        odd
    );
}

#[test]
fn the_trained_tokenizer_saves_as_a_hf_folder_with_chatml() {
    let t = train(120, true);
    let dir = tempfile::tempdir().unwrap();
    t.save_hf_dir(dir.path()).unwrap();
    let back = TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(back.eos_token.as_deref(), Some("<|im_end|>"));
    let text = &corpus_texts()[7];
    assert_eq!(
        back.encode(text, false).unwrap(),
        t.encode(text, false).unwrap()
    );
    let template = back.chat_template().unwrap().unwrap();
    let r = Renderer::new(back.clone(), template, &[]).unwrap();
    assert_eq!(r.end_of_turn_id(), back.token_id("<|im_end|>"));
}

#[test]
fn an_empty_corpus_cannot_train_a_tokenizer() {
    let err = tokenizer_train::train(Vec::<String>::new(), &TokenizerTrainConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no text"), "{err}");
    let err = tokenizer_train::train(
        corpus_texts(),
        &TokenizerTrainConfig {
            vocab_size: 3,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`tokenizer.vocab_size`"), "{err}");
}

fn record(i: usize, finish: &str) -> Record {
    let prompt = format!("What is {i} + 1?");
    let (reasoning, completion) = (
        format!("{i} + 1 = {}", i + 1),
        format!("\\boxed{{{}}}", i + 1),
    );
    Record {
        finish_reason: finish.into(),
        teacher: "t".into(),
        ..Record::sample(&format!("p{i}"), 0, &prompt, &reasoning, &completion)
    }
}

#[test]
fn conversations_come_from_messages_or_from_the_text_columns() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let records: Vec<Record> = (0..5)
        .map(|i| record(i, if i == 4 { "length" } else { "stop" }))
        .collect();
    let mut w = ShardWriter::create(&full, record::schema(), WriterOptions::default()).unwrap();
    w.write(&record::records_to_batch(&records).unwrap())
        .unwrap();
    w.finish().unwrap();
    let convs = data::read_corpus(&[full]).unwrap();
    assert_eq!(convs.len(), 5);
    assert_eq!(convs[2].id, "p2/0");
    assert_eq!(convs[4].finish_reason.as_deref(), Some("length"));
    assert_eq!(
        convs[2].messages,
        vec![
            Message::user("What is 2 + 1?"),
            Message::assistant("<think>\n2 + 1 = 3\n</think>\n\n\\boxed{3}")
        ]
    );

    // A corpus with only prompt/reasoning/completion gives the same conversations.
    let fields = dir.path().join("fields");
    let col = |f: &dyn Fn(&Record) -> String| -> ArrayRef {
        Arc::new(StringArray::from(records.iter().map(f).collect::<Vec<_>>()))
    };
    let batch = RecordBatch::try_from_iter(vec![
        ("prompt", col(&|r| r.prompt.clone())),
        ("reasoning", col(&|r| r.reasoning.clone())),
        ("completion", col(&|r| r.completion.clone())),
    ])
    .unwrap();
    let mut w = ShardWriter::create(&fields, batch.schema(), WriterOptions::default()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let from_fields = data::read_corpus(&[fields]).unwrap();
    assert_eq!(from_fields.len(), 5);
    for (a, b) in convs.iter().zip(&from_fields) {
        assert_eq!(a.messages, b.messages);
        assert_eq!(b.finish_reason, None);
    }

    // Neither messages nor the text columns: the error names what is missing.
    let bare = dir.path().join("bare");
    let batch = RecordBatch::try_from_iter(vec![("prompt", col(&|r| r.prompt.clone()))]).unwrap();
    let mut w = ShardWriter::create(&bare, batch.schema(), WriterOptions::default()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let err = data::read_corpus(&[bare]).unwrap_err().to_string();
    assert!(
        err.contains("reasoning") && err.contains("completion"),
        "{err}"
    );
}
