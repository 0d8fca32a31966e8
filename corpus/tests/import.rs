//! `import` on files in the layouts of public reasoning corpora (fixtures written by Hugging Face
//! `datasets`, `fixtures/import/make_fixtures.py`): every field of every sample, the problem ids
//! that group samples, skipped rows by reason, and the imported corpus going through the passes
//! (verify, filter, export and back).

mod corpus_support;

use std::path::{Path, PathBuf};

use corpus_support::read_records;
use distill_corpus::export::{self, ExportConfig};
use distill_corpus::filter::{self, FilterConfig};
use distill_corpus::import::{self, skip, ImportConfig, ImportIo, Layout, SystemPrompt};
use distill_corpus::pass::PassIo;
use distill_corpus::record::{assistant_content, Message, Record};
use distill_corpus::verify::{self, VerifyConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

fn import_with(name: &str, cfg: &ImportConfig) -> (import::ImportSummary, Vec<Record>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("corpus");
    let summary = import::run(
        &ImportIo::new(vec![fixture(name)], &out),
        cfg,
        None,
        &mut |_| {},
    )
    .unwrap();
    (summary, read_records(&out))
}

/// The error `import` fails with, as the user reads it.
fn import_error(input: PathBuf, out: &Path, cfg: &ImportConfig) -> String {
    import::run(&ImportIo::new(vec![input], out), cfg, None, &mut |_| {})
        .unwrap_err()
        .to_string()
}

fn user(text: &str) -> Message {
    Message::new("user", text)
}

fn assistant(reasoning: &str, completion: &str) -> Message {
    Message::new("assistant", assistant_content(reasoning, completion))
}

#[test]
fn openr1_math_generations_become_one_sample_each() {
    let cfg = ImportConfig {
        layout: Layout::Columns,
        teacher: "deepseek-ai/DeepSeek-R1".into(),
        ..ImportConfig::default()
    };
    let (s, rows) = import_with("openr1-math.parquet", &cfg);
    assert_eq!((s.rows_read, s.samples, s.problems), (3, 5, 3));
    assert_eq!(s.mapping.prompt.as_deref(), Some("problem"));
    assert_eq!(s.mapping.response.as_deref(), Some("generations"));
    assert_eq!(s.mapping.answer.as_deref(), Some("answer"));
    assert_eq!((s.think.r1, s.think.unclosed), (5, 1));
    assert_eq!(s.with_reference, 5);
    let first = &rows[0];
    assert_eq!(first.prompt, "What is $3 + 4$?");
    assert_eq!(first.reasoning, "3 plus 4 is 7.");
    assert_eq!(first.completion, "The answer is $\\boxed{7}$.");
    assert_eq!(
        first.messages,
        vec![
            user("What is $3 + 4$?"),
            assistant("3 plus 4 is 7.", "The answer is $\\boxed{7}$.")
        ]
    );
    assert_eq!(first.reference_answer.as_deref(), Some("7"));
    assert_eq!(
        (first.source.as_str(), first.teacher.as_str()),
        ("olympiads", "deepseek-ai/DeepSeek-R1")
    );
    assert_eq!(first.correct, None);
    assert_eq!(first.finish_reason, "stop");
    assert!(first.temperature.is_nan() && first.top_p.is_nan());
    // The two generations of one problem share its id, numbered in order.
    assert_eq!(rows[1].problem_id, first.problem_id);
    assert_eq!((first.sample_index, rows[1].sample_index), (0, 1));
    assert_eq!(rows[1].id, format!("{}/1", first.problem_id));
    assert!(
        first.problem_id.starts_with("olympiads-"),
        "{}",
        first.problem_id
    );
    // A trace cut at the length limit: all reasoning, finish reason from `finish_reasons`.
    let cut = &rows[2];
    assert_eq!(
        (cut.reasoning.as_str(), cut.completion.as_str()),
        ("Six sevens: 7, 14, 21, 28", "")
    );
    assert_eq!(cut.finish_reason, "length");
    assert_eq!(
        cut.messages[1],
        Message::new("assistant", "<think>\nSix sevens: 7, 14, 21, 28")
    );
    assert_eq!(rows[3].finish_reason, "stop");
    // `--id-column uuid` takes the dataset's ids.
    let by_uuid = ImportConfig {
        id_column: Some("uuid".into()),
        ..cfg.clone()
    };
    let (_, rows) = import_with("openr1-math.parquet", &by_uuid);
    assert_eq!(rows[4].id, "0f1c2d3e-0000-0000-0000-000000000003/1");
}

#[test]
fn openr1_math_auto_reads_its_messages_column() {
    let (s, rows) = import_with("openr1-math.parquet", &ImportConfig::default());
    assert_eq!(s.mapping.layout, Layout::Messages);
    // The second row's `messages` is empty (no correct generation): skipped, with its place.
    assert_eq!((s.rows_read, s.samples), (3, 2));
    assert_eq!(s.skipped.get(skip::NO_ASSISTANT_TURN), Some(&1));
    assert!(s.first_skipped[skip::NO_ASSISTANT_TURN].ends_with("openr1-math.parquet: row 1"));
    assert_eq!(rows[1].reasoning, "10 take away 3 leaves 7.");
    assert_eq!(rows[1].reference_answer.as_deref(), Some("7"));
}

#[test]
fn sky_t1_conversations_become_r1_samples() {
    let (s, rows) = import_with("bespoke-stratos.parquet", &ImportConfig::default());
    assert_eq!(s.mapping.layout, Layout::Conversations);
    assert_eq!(s.mapping.system.as_deref(), Some("system"));
    assert_eq!((s.rows_read, s.samples, s.think.sky_t1), (3, 2, 2));
    assert_eq!(s.skipped.get(skip::NO_ASSISTANT_TURN), Some(&1));
    let r = &rows[1];
    assert_eq!(r.reasoning, "Nine minus five.\n\nThat is four.");
    assert_eq!(r.completion, "The result is \\boxed{4}.");
    // The system prompt asks for the Sky-T1 tags the answer no longer has: left out (`auto`).
    assert_eq!(
        r.messages[0],
        user("Return your final response within \\boxed{}. What is $9 - 5$?")
    );
    assert_eq!(
        r.messages[1],
        assistant(
            "Nine minus five.\n\nThat is four.",
            "The result is \\boxed{4}."
        )
    );
    assert_eq!(r.source, "bespoke-stratos");
    assert_eq!(r.reference_answer, None);
    assert_eq!(r.messages.len(), 2);
    // `--system keep` keeps it anyway.
    let kept = ImportConfig {
        system: SystemPrompt::Keep,
        ..ImportConfig::default()
    };
    let (_, rows) = import_with("bespoke-stratos.parquet", &kept);
    assert_eq!(rows[1].messages[0].role, "system");
    assert!(rows[1].messages[0].content.contains("<|begin_of_thought|>"));
    assert_eq!(rows[1].messages.len(), 3);
}

#[test]
fn mixture_of_thoughts_groups_one_prompt_and_keeps_sources() {
    let (s, rows) = import_with("mixture-of-thoughts.parquet", &ImportConfig::default());
    assert_eq!((s.rows_read, s.samples, s.problems), (4, 3, 2));
    assert_eq!(s.skipped.get(skip::EMPTY_RESPONSE), Some(&1));
    // The same question twice: one problem, two samples.
    assert_eq!(rows[0].problem_id, rows[2].problem_id);
    assert_eq!((rows[0].sample_index, rows[2].sample_index), (0, 1));
    assert_eq!(rows[1].source, "open-r1/codeforces-cots");
    assert_eq!(rows[1].prompt, "Write a function that adds two numbers.");
    assert_eq!(
        rows[1].messages[0],
        Message::new("system", "You are a helpful assistant.")
    );
    // The system prompt is not part of the problem's identity.
    assert!(rows[1].problem_id.starts_with("open-r1/codeforces-cots-"));
}

#[test]
fn s1k_reasoning_and_attempt_come_from_their_columns() {
    let cfg = ImportConfig {
        prompt_column: Some("question".into()),
        reasoning_column: Some("deepseek_thinking_trajectory".into()),
        response_column: Some("deepseek_attempt".into()),
        answer_column: Some("solution".into()),
        source: Some("s1K-1.1".into()),
        ..ImportConfig::default()
    };
    let (s, rows) = import_with("s1k.parquet", &cfg);
    assert_eq!((s.samples, s.think.field), (1, 1));
    let r = &rows[0];
    assert_eq!(r.reasoning, "A year has twelve months.");
    assert_eq!(r.completion, "There are $\\boxed{12}$ months.");
    assert_eq!(
        r.messages[1],
        assistant(
            "A year has twelve months.",
            "There are $\\boxed{12}$ months."
        )
    );
    assert_eq!(
        (r.source.as_str(), r.reference_answer.as_deref()),
        ("s1K-1.1", Some("12"))
    );
}

#[test]
fn trl_prompt_completion_with_reasoning_content() {
    let (s, rows) = import_with("trl-prompt-completion.jsonl", &ImportConfig::default());
    assert_eq!(s.mapping.layout, Layout::Columns);
    assert_eq!((s.samples, s.think.field), (1, 1));
    let r = &rows[0];
    assert_eq!(
        (r.reasoning.as_str(), r.completion.as_str()),
        ("Half of eight is four.", "$\\boxed{4}$")
    );
    assert_eq!(
        r.messages,
        vec![
            user("What is $8 / 2$?"),
            assistant("Half of eight is four.", "$\\boxed{4}$")
        ]
    );
    assert_eq!(r.reference_answer.as_deref(), Some("4"));
}

#[test]
fn sharegpt_array_keeps_earlier_turns_and_ids() {
    let cfg = ImportConfig {
        id_column: Some("id".into()),
        ..ImportConfig::default()
    };
    let (s, rows) = import_with("sharegpt.json", &cfg);
    assert_eq!((s.rows_read, s.samples), (2, 2));
    assert_eq!(rows[0].id, "sg-1/0");
    let r = &rows[1];
    assert_eq!(r.prompt, "And what is $2^5$?");
    assert_eq!(
        r.messages,
        vec![
            user("Say hello."),
            Message::new("assistant", "Hello!"),
            user("And what is $2^5$?"),
            assistant("2, 4, 8, 16, 32.", "$\\boxed{32}$"),
        ]
    );
}

#[test]
fn imported_corpus_goes_through_verify_filter_and_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, verified, kept) = (
        dir.path().join("raw"),
        dir.path().join("v"),
        dir.path().join("f"),
    );
    let cfg = ImportConfig {
        layout: Layout::Columns,
        ..ImportConfig::default()
    };
    let tokens = |text: &str| text.split_whitespace().count();
    let mut heard = Vec::new();
    let s = import::run(
        &ImportIo::new(vec![fixture("openr1-math.parquet")], &raw),
        &cfg,
        Some(&tokens),
        &mut |p| heard.push(p),
    )
    .unwrap();
    assert!(s.token_counts);
    // Progress after each batch, against the rows the parquet footer counts.
    let last = heard.last().unwrap();
    assert_eq!(
        (last.rows_read, last.samples, last.total_rows),
        (3, 5, Some(3))
    );
    let rows = read_records(&raw);
    assert_eq!((rows[0].prompt_tokens, rows[0].completion_tokens), (5, 11));
    let v = verify::run(
        &PassIo::new(vec![raw.clone()], &verified),
        &VerifyConfig::default(),
    )
    .unwrap();
    assert_eq!((v.correct, v.incorrect), (3, 2));
    let f = filter::run(
        &PassIo::new(vec![verified], &kept),
        &FilterConfig::default(),
    )
    .unwrap();
    assert_eq!(f.counts.rows_out, 3);
    assert_eq!(f.counts.dropped.get(filter::reason::TRUNCATED), Some(&1));
    assert_eq!(f.counts.dropped.get(filter::reason::INCORRECT), Some(&1));
    // `corpus export` writes TRL's `messages` jsonl; importing it gives the same samples back.
    let jsonl = dir.path().join("train.jsonl");
    export::run(
        &PassIo::new(vec![kept.clone()], &jsonl),
        &ExportConfig::default(),
    )
    .unwrap();
    let again = ImportConfig {
        id_column: Some("problem_id".into()),
        ..ImportConfig::default()
    };
    let back = dir.path().join("back");
    import::run(
        &ImportIo::new(vec![jsonl], &back),
        &again,
        None,
        &mut |_| {},
    )
    .unwrap();
    let (before, after) = (read_records(&kept), read_records(&back));
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            (&a.problem_id, &a.prompt, &a.messages),
            (&b.problem_id, &b.prompt, &b.messages)
        );
        assert_eq!((&a.reasoning, &a.completion), (&b.reasoning, &b.completion));
    }
}

#[test]
fn a_folder_imports_every_file_and_bad_input_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("OpenR1-Math-220k/data");
    std::fs::create_dir_all(&data).unwrap();
    for part in [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ] {
        std::fs::copy(fixture("openr1-math.parquet"), data.join(part)).unwrap();
    }
    std::fs::write(dir.path().join("OpenR1-Math-220k/README.md"), "# card\n").unwrap();
    let io = ImportIo::new(
        vec![dir.path().join("OpenR1-Math-220k")],
        dir.path().join("out"),
    );
    let cfg = ImportConfig {
        layout: Layout::Columns,
        source: None,
        limit: Some(4),
        ..ImportConfig::default()
    };
    let s = import::run(&io, &cfg, None, &mut |_| {}).unwrap();
    assert_eq!((s.files.len(), s.rows_read, s.samples), (2, 4, 7));
    // A named column that is not there, in one line that lists the columns present.
    let missing = ImportConfig {
        answer_column: Some("final".into()),
        ..ImportConfig::default()
    };
    let out = dir.path().join("out2");
    let err = import_error(fixture("s1k.parquet"), &out, &missing);
    assert!(
        err.contains("no column `final`") && err.contains("`deepseek_attempt`"),
        "{err}"
    );
    assert!(!out.exists());
    // Columns with no prompt column it knows: the flag to pass.
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, "{\"q\": \"1+1?\", \"a\": \"2\"}\n").unwrap();
    let err = import_error(plain, &out, &ImportConfig::default());
    assert!(
        err.contains("no prompt column: name it with `--prompt-column`"),
        "{err}"
    );
    // A bad line names the file and the line.
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"messages\": []}\n{not json\n").unwrap();
    let err = import_error(broken, &out, &ImportConfig::default());
    assert!(
        err.contains("Line 2 of") && err.contains("broken.jsonl"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn an_empty_response_among_others_is_counted_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gens.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"problem": "2+2?", "generations": ["<think>four</think>4", "", null], "answer": "So $\\boxed{4}$."}"#,
            "\n",
            r#"{"problem": "3+3?", "generations": []}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let s = import::run(
        &ImportIo::new(vec![file], &out),
        &ImportConfig::default(),
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((s.rows_read, s.samples), (2, 1));
    assert_eq!(s.skipped.get(skip::EMPTY_RESPONSE), Some(&3));
    assert!(s.first_skipped[skip::EMPTY_RESPONSE].ends_with("gens.jsonl: line 1"));
    let r = &read_records(&out)[0];
    assert_eq!(r.completion, "4");
    // A worked solution as the reference: its last `\boxed{}`.
    assert_eq!(r.reference_answer.as_deref(), Some("4"));
}

#[test]
fn a_folder_saved_by_datasets_imports_its_arrow_shards() {
    let (s, rows) = import_with("saved-dataset", &ImportConfig::default());
    // `dataset_info.json` and `state.json` are metadata, not rows.
    assert_eq!(s.files.len(), 1, "{:?}", s.files);
    assert_eq!((s.rows_read, s.samples, s.with_reference), (2, 2, 2));
    assert_eq!(rows[1].prompt, "What is $7 - 2$?");
    assert_eq!(
        (rows[1].reasoning.as_str(), rows[1].completion.as_str()),
        ("Seven less two.", "$\\boxed{5}$")
    );
    assert_eq!(rows[1].reference_answer.as_deref(), Some("5"));
    assert_eq!(rows[1].source, "saved-dataset");
}

#[test]
fn gzipped_jsonl_imports_as_the_plain_file() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("sharegpt.json.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&std::fs::read(fixture("sharegpt.json")).unwrap())
        .unwrap();
    enc.finish().unwrap();
    let out = dir.path().join("out");
    let s = import::run(
        &ImportIo::new(vec![gz], &out),
        &ImportConfig::default(),
        None,
        &mut |_| {},
    )
    .unwrap();
    let (_, plain) = import_with("sharegpt.json", &ImportConfig::default());
    assert_eq!(s.samples, 2);
    let gzipped = read_records(&out);
    for (a, b) in plain.iter().zip(&gzipped) {
        assert_eq!(
            (&a.prompt, &a.messages, &a.problem_id),
            (&b.prompt, &b.messages, &b.problem_id)
        );
    }
}
