//! `distill corpus …` end to end through the binary: the whole curation chain on a small
//! crafted corpus, and the errors a user sees for bad input.

use std::path::{Path, PathBuf};

use distill_corpus::record::{self, Record};
use distill_corpus::shards::{ShardReader, ShardWriter, WriterOptions};

mod common;
use common::{distill, failing, ok};

fn sample(problem: usize, index: i32, answer: &str) -> Record {
    let prompt = format!("Problem {problem}: Lena buys {problem} boxes of {index} pencils each.");
    let reasoning = format!("Each box has some pencils.\n\nSo we multiply for problem {problem}.");
    let completion = format!("The answer is \\boxed{{{answer}}}.");
    Record {
        id: record::record_id(&format!("p{problem}"), index),
        problem_id: format!("p{problem}"),
        sample_index: index,
        source: if problem.is_multiple_of(2) {
            "even"
        } else {
            "odd"
        }
        .into(),
        messages: record::conversation(&prompt, &reasoning, &completion),
        prompt,
        reasoning,
        completion,
        final_answer: None,
        reference_answer: Some("12".into()),
        correct: None,
        finish_reason: "stop".into(),
        prompt_tokens: 10,
        completion_tokens: 30,
        teacher: "tiny".into(),
        temperature: 0.6,
        top_p: 0.95,
        seed: 1,
    }
}

/// 10 problems × 2 samples: the second sample of every third problem is wrong.
fn write_corpus(dir: &Path) -> Vec<Record> {
    let mut rows = Vec::new();
    for p in 0..10 {
        rows.push(sample(p, 0, "12"));
        rows.push(sample(p, 1, if p % 3 == 0 { "13" } else { "12.0" }));
    }
    let mut w = ShardWriter::create(dir, record::schema(), WriterOptions::default()).unwrap();
    w.write(&record::records_to_batch(&rows).unwrap()).unwrap();
    w.finish().unwrap();
    rows
}

fn rows_in(dir: &Path) -> u64 {
    ShardReader::open(&[dir.to_path_buf()]).unwrap().num_rows()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn gsm8k_test() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/test.jsonl")
}

#[test]
fn the_curation_chain_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let corpus = d.join("corpus");
    write_corpus(&corpus);

    let out = ok(&["corpus", "verify", s(&corpus), "-o", s(&d.join("verified"))]);
    assert!(
        out.contains("verify: 20 rows in, 20 kept, 0 dropped"),
        "{out}"
    );
    assert!(
        out.contains("correct 16 · incorrect 4 · no reference 0"),
        "{out}"
    );

    let out = ok(&[
        "corpus",
        "filter",
        s(&d.join("verified")),
        "-o",
        s(&d.join("filtered")),
    ]);
    assert!(
        out.contains("filter: 20 rows in, 16 kept, 4 dropped"),
        "{out}"
    );
    assert!(
        out.contains("incorrect") && out.contains("4  (20.0%)"),
        "{out}"
    );

    let out = ok(&[
        "corpus",
        "dedup",
        s(&d.join("filtered")),
        "-o",
        s(&d.join("deduped")),
        "--no-near",
    ]);
    assert!(
        out.contains("dedup: 16 rows in, 16 kept, 0 dropped"),
        "{out}"
    );

    let out = ok(&[
        "corpus",
        "decontaminate",
        s(&d.join("deduped")),
        "-o",
        s(&d.join("clean")),
        "--eval",
        s(&gsm8k_test()),
    ]);
    assert!(
        out.contains("decontaminate: 16 rows in, 16 kept, 0 dropped"),
        "{out}"
    );
    assert!(out.contains("evaluation problems: 1319"), "{out}");

    let out = ok(&[
        "corpus",
        "split",
        s(&d.join("clean")),
        "-o",
        s(&d.join("split")),
        "--eval-fraction",
        "0.3",
    ]);
    assert!(out.contains("split: 16 rows in"), "{out}");
    assert_eq!(
        rows_in(&d.join("split/train")) + rows_in(&d.join("split/eval")),
        16
    );

    let out = ok(&[
        "corpus",
        "stats",
        s(&d.join("clean")),
        "-o",
        s(&d.join("stats")),
        "--dropped",
        s(&d.join("filtered")),
    ]);
    assert!(out.contains("stats: 16 rows, 10 problems"), "{out}");
    assert!(out.contains("dropped by earlier passes: 4"), "{out}");
    assert!(d.join("stats/stats.json").is_file());
    assert!(d.join("stats/reasoning_chars.png").is_file());
    assert!(d.join("stats/drop_reasons.png").is_file());

    let jsonl = d.join("train.jsonl");
    let out = ok(&["corpus", "export", s(&d.join("clean")), "-o", s(&jsonl)]);
    assert!(
        out.contains("export: 16 rows (0 with rebuilt messages)"),
        "{out}"
    );
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["messages"][0]["role"], "user");
    assert_eq!(
        first["messages"][1]["content"],
        "<think>\nEach box has some pencils.\n\nSo we multiply for problem 0.\n</think>\n\nThe answer is \\boxed{12}."
    );
}

#[test]
fn bad_input_fails_clearly_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let corpus = d.join("corpus");
    write_corpus(&corpus);

    let err = failing(&[
        "corpus",
        "decontaminate",
        s(&corpus),
        "-o",
        s(&d.join("clean")),
        "--eval",
        s(&d.join("missing.jsonl")),
    ]);
    assert!(err.contains("missing.jsonl"), "{err}");
    assert!(!d.join("clean").exists());

    let err = failing(&[
        "corpus",
        "filter",
        s(&d.join("nowhere")),
        "-o",
        s(&d.join("f")),
    ]);
    assert!(err.contains("nowhere"), "{err}");
    assert!(!d.join("f").exists());

    // An output that exists is not replaced without `--overwrite`.
    std::fs::create_dir(d.join("taken")).unwrap();
    let err = failing(&["corpus", "verify", s(&corpus), "-o", s(&d.join("taken"))]);
    assert!(
        err.contains("already exists (`--overwrite` replaces it)"),
        "{err}"
    );
    ok(&[
        "corpus",
        "verify",
        s(&corpus),
        "-o",
        s(&d.join("taken")),
        "--overwrite",
    ]);
    assert_eq!(rows_in(&d.join("taken")), 20);

    // Nothing but the outputs asked for was created.
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["corpus", "taken"]);
}

/// A pass that keeps no row succeeds (its empty output is a result) but says so on stderr with
/// its reasons, the line a user looks for when `train` later finds no data.
#[test]
fn a_pass_that_drops_every_row_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let corpus = d.join("corpus");
    write_corpus(&corpus);
    let none = d.join("none");
    let args = [
        "corpus",
        "filter",
        s(&corpus),
        "-o",
        s(&none),
        "--keep-unverified",
        "--min-tokens",
        "31",
    ];
    let out = distill(&args);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: `filter` kept none of the 20 rows (too_short 20)"),
        "{stderr}"
    );
    assert_eq!(rows_in(&none), 0);
    let out = distill(&[
        "corpus",
        "filter",
        s(&corpus),
        "-o",
        s(&d.join("some")),
        "--keep-unverified",
    ]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

/// `corpus import` of an OpenR1-Math file (as `datasets` writes it), token counts from a
/// model's tokenizer, through verify and filter, and a student trained on what is left.
#[test]
fn an_imported_corpus_is_curated_and_trains_a_student() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let openr1 = root.join("corpus/tests/fixtures/import/openr1-math.parquet");
    let base = root.join("models/tests/fixtures/tiny-llama.gguf");
    let raw = d.join("raw");
    let out = ok(&[
        "corpus",
        "import",
        s(&openr1),
        "-o",
        s(&raw),
        "--layout",
        "columns",
        "--tokenizer",
        s(&base),
        "--teacher",
        "deepseek-ai/DeepSeek-R1",
    ]);
    assert!(
        out.contains("import: 3 rows from 1 file, 5 samples of 3 problems"),
        "{out}"
    );
    assert!(
        out.contains("layout columns: prompt `problem` · response `generations` · answer `answer`"),
        "{out}"
    );
    assert!(!out.contains("token counts: not counted"), "{out}");
    let rows = records_in(&raw);
    assert!(rows
        .iter()
        .all(|r| r.completion_tokens > 0 && r.prompt_tokens > 0));
    ok(&["corpus", "verify", s(&raw), "-o", s(&d.join("v"))]);
    let out = ok(&["corpus", "filter", s(&d.join("v")), "-o", s(&d.join("f"))]);
    assert!(
        out.contains("filter: 5 rows in, 3 kept, 2 dropped"),
        "{out}"
    );
    let run = d.join("student");
    ok(&[
        "--threads",
        "1",
        "train",
        "--quiet",
        "--max-steps",
        "2",
        "--max-seq-len",
        "128",
        "--eval-fraction",
        "0",
        "--base",
        s(&base),
        "--corpus",
        s(&d.join("f")),
        "--out",
        s(&run),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["rows"], 3, "{report}");
    assert_eq!(report["train_documents"], 3, "{report}");
    // A file in no layout it knows: the flag that fixes it, in one line, and no output.
    let plain = d.join("plain.jsonl");
    std::fs::write(&plain, "{\"q\": \"1+1?\", \"a\": \"2\"}\n").unwrap();
    let err = failing(&["corpus", "import", s(&plain), "-o", s(&d.join("p"))]);
    assert!(
        err.contains("has no prompt column: name it with `--prompt-column`"),
        "{err}"
    );
    assert!(!d.join("p").exists());
}

fn records_in(dir: &Path) -> Vec<Record> {
    let reader = ShardReader::open(&[dir.to_path_buf()]).unwrap();
    reader
        .batches()
        .flat_map(|b| record::records_from_batch(&b.unwrap()).unwrap())
        .collect()
}
