//! Problem sources: the real GSM8K and MATH-500 files in ../shared/data, the same sets in their
//! Hugging Face hub parquet layouts (written here), column mappings, and bad input.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray};
use distill_corpus::answer::answers_equivalent;
use distill_corpus::problems::{load_problems, Preset, Problem, ProblemSource};
use distill_corpus::Error;
use parquet::arrow::ArrowWriter;

fn shared_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

fn source(path: impl Into<PathBuf>, preset: Option<Preset>) -> ProblemSource {
    ProblemSource {
        path: path.into(),
        preset,
        ..Default::default()
    }
}

/// Compares problem lists, reporting the first difference rather than both whole lists.
fn assert_same(got: &[Problem], want: &[Problem], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: number of problems");
    if let Some((g, w)) = got.iter().zip(want).find(|(g, w)| g != w) {
        panic!("{what}: first difference\n got: {g:?}\nwant: {w:?}");
    }
}

fn jsonl_rows(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .expect("shared data is readable")
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid jsonl"))
        .collect()
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).expect("a valid batch");
    let file = fs::File::create(path).expect("temp file");
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

fn strings(rows: &[serde_json::Value], key: &str) -> ArrayRef {
    Arc::new(StringArray::from(
        rows.iter()
            .map(|r| r[key].as_str().map(str::to_string))
            .collect::<Vec<_>>(),
    ))
}

#[test]
fn gsm8k_jsonl_train_and_test() {
    for (split, n) in [("train", 7473), ("test", 1319)] {
        let path = shared_data().join(format!("gsm8k/{split}.jsonl"));
        let problems = load_problems(&source(&path, Some(Preset::Gsm8k))).expect("GSM8K loads");
        assert_eq!(problems.len(), n, "{split}");
        for (i, p) in problems.iter().enumerate() {
            assert_eq!(p.id, format!("gsm8k-{i}"));
            assert_eq!(p.source, "gsm8k");
            let reference = p.reference_answer.as_deref().expect("a reference");
            assert!(
                reference.parse::<f64>().is_ok(),
                "{split} {i}: reference {reference:?} is not numeric"
            );
            let solution = p.solution.as_deref().expect("the worked answer is kept");
            assert!(solution.contains("#### "));
            // The reference verifies against the dataset's own final line.
            let last_line = solution.lines().last().unwrap_or("");
            assert!(answers_equivalent(
                last_line.trim_start_matches("#### "),
                reference
            ));
        }
        // The preset is inferred from the columns when not given.
        let inferred = load_problems(&source(&path, None)).expect("GSM8K loads without preset");
        assert_eq!(inferred.len(), n);
        assert_eq!(inferred[0].reference_answer, problems[0].reference_answer);
    }
    let test =
        load_problems(&source(shared_data().join("gsm8k/test.jsonl"), None)).expect("GSM8K loads");
    assert_eq!(test[0].reference_answer.as_deref(), Some("18"));
    assert!(test[0].prompt.starts_with("Janet"));
}

#[test]
fn gsm8k_references_drop_thousands_commas() {
    let path = shared_data().join("gsm8k/train.jsonl");
    let problems = load_problems(&source(&path, Some(Preset::Gsm8k))).expect("loads");
    let raw = jsonl_rows(&path);
    let with_commas: Vec<usize> = raw
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            let a = r["answer"].as_str().unwrap_or("");
            a.rsplit("####").next().unwrap_or("").contains(',')
        })
        .map(|(i, _)| i)
        .collect();
    assert!(
        !with_commas.is_empty(),
        "the train split has `#### 1,000`-style answers"
    );
    for i in with_commas {
        assert!(!problems[i]
            .reference_answer
            .as_deref()
            .unwrap_or(",")
            .contains(','));
    }
}

#[test]
fn math500_jsonl() {
    let path = shared_data().join("math500/test.jsonl");
    let problems = load_problems(&source(&path, Some(Preset::Math))).expect("MATH-500 loads");
    assert_eq!(problems.len(), 500);
    let raw = jsonl_rows(&path);
    for (p, r) in problems.iter().zip(&raw) {
        assert_eq!(p.id, r["unique_id"].as_str().expect("unique_id"));
        assert_eq!(p.source, "math");
        assert_eq!(p.prompt, r["problem"].as_str().expect("problem"));
        assert_eq!(p.reference_answer.as_deref(), r["answer"].as_str());
        assert_eq!(p.solution.as_deref(), r["solution"].as_str());
    }
    assert_same(
        &load_problems(&source(&path, None)).expect("inferred"),
        &problems,
        "inferred",
    );
}

#[test]
fn math_reference_falls_back_to_the_last_box_of_the_solution() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("math.jsonl");
    let raw = jsonl_rows(&shared_data().join("math500/test.jsonl"));
    let lines: Vec<String> = raw
        .iter()
        .map(|r| {
            serde_json::json!({"problem": r["problem"], "solution": r["solution"]}).to_string()
        })
        .collect();
    fs::write(&path, lines.join("\n")).expect("write");
    let problems = load_problems(&source(&path, Some(Preset::Math))).expect("loads");
    assert_eq!(problems.len(), 500);
    for (p, r) in problems.iter().zip(&raw) {
        assert_eq!(
            p.reference_answer.as_deref(),
            r["answer"].as_str(),
            "{}",
            p.id
        );
        assert_eq!(
            p.id,
            format!("math-{}", problems.iter().position(|q| q == p).unwrap_or(0))
        );
    }
}

#[test]
fn hub_parquet_layouts_match_the_jsonl() {
    let dir = tempfile::tempdir().expect("temp dir");

    // openai/gsm8k: main/test-00000-of-00001.parquet with columns question, answer.
    let gsm_rows = jsonl_rows(&shared_data().join("gsm8k/test.jsonl"));
    let gsm_dir = dir.path().join("gsm8k/main");
    fs::create_dir_all(&gsm_dir).expect("mkdir");
    write_parquet(
        &gsm_dir.join("test-00000-of-00001.parquet"),
        vec![
            ("question", strings(&gsm_rows, "question")),
            ("answer", strings(&gsm_rows, "answer")),
        ],
    );
    let from_jsonl = load_problems(&source(
        shared_data().join("gsm8k/test.jsonl"),
        Some(Preset::Gsm8k),
    ))
    .expect("jsonl");
    let from_file = load_problems(&source(
        gsm_dir.join("test-00000-of-00001.parquet"),
        Some(Preset::Gsm8k),
    ))
    .expect("parquet file");
    let from_dir = load_problems(&source(&gsm_dir, None)).expect("parquet folder");
    assert_same(&from_file, &from_jsonl, "gsm8k parquet file");
    assert_same(&from_dir, &from_jsonl, "gsm8k parquet folder");

    // HuggingFaceH4/MATH-500: test.jsonl on the hub, parquet conversion with the same columns,
    // `level` as an integer.
    let math_rows = jsonl_rows(&shared_data().join("math500/test.jsonl"));
    let math_path = dir.path().join("math500.parquet");
    write_parquet(
        &math_path,
        vec![
            ("problem", strings(&math_rows, "problem")),
            ("solution", strings(&math_rows, "solution")),
            ("answer", strings(&math_rows, "answer")),
            ("subject", strings(&math_rows, "subject")),
            (
                "level",
                Arc::new(Int64Array::from(
                    math_rows
                        .iter()
                        .map(|r| r["level"].as_i64())
                        .collect::<Vec<_>>(),
                )),
            ),
            ("unique_id", strings(&math_rows, "unique_id")),
        ],
    );
    let from_jsonl = load_problems(&source(
        shared_data().join("math500/test.jsonl"),
        Some(Preset::Math),
    ))
    .expect("jsonl");
    let from_parquet = load_problems(&source(&math_path, Some(Preset::Math))).expect("parquet");
    assert_same(&from_parquet, &from_jsonl, "math500 parquet");
}

#[test]
fn column_mapping_and_other_string_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("custom.jsonl");
    fs::write(
        &path,
        "{\"q\": \"What is 6*7?\", \"a\": 42, \"key\": \"p1\", \"work\": \"6*7=42\"}\n\
         \n\
         {\"q\": \"What is 1/2?\", \"a\": \"\\\\frac12\", \"key\": \"p2\", \"work\": null}\n",
    )
    .expect("write");
    let src = ProblemSource {
        path: path.clone(),
        prompt_col: Some("q".into()),
        answer_col: Some("a".into()),
        id_col: Some("key".into()),
        solution_col: Some("work".into()),
        source_name: Some("mine".into()),
        ..Default::default()
    };
    let problems = load_problems(&src).expect("loads");
    assert_eq!(
        problems,
        vec![
            Problem {
                id: "p1".into(),
                source: "mine".into(),
                prompt: "What is 6*7?".into(),
                reference_answer: Some("42".into()),
                solution: Some("6*7=42".into()),
            },
            Problem {
                id: "p2".into(),
                source: "mine".into(),
                prompt: "What is 1/2?".into(),
                reference_answer: Some("\\frac12".into()),
                solution: None,
            },
        ]
    );

    // Without an answer column, references are absent; ids come from the file stem.
    let bare = load_problems(&ProblemSource {
        path: path.clone(),
        prompt_col: Some("q".into()),
        ..Default::default()
    })
    .expect("loads");
    assert_eq!(bare[1].id, "custom-1");
    assert_eq!(bare[1].reference_answer, None);

    // LargeUtf8 parquet columns read like Utf8 ones.
    let pq = dir.path().join("large.parquet");
    write_parquet(
        &pq,
        vec![
            (
                "prompt",
                Arc::new(LargeStringArray::from(vec!["2+2?", "3+3?"])) as ArrayRef,
            ),
            ("answer", Arc::new(Int64Array::from(vec![4, 6])) as ArrayRef),
        ],
    );
    let problems = load_problems(&source(&pq, None)).expect("loads");
    assert_eq!(problems[1].prompt, "3+3?");
    assert_eq!(problems[1].reference_answer.as_deref(), Some("6"));
    assert_eq!(problems[1].id, "large-1");
}

#[test]
fn serialized_problems_read_back_unchanged_and_limit_applies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("problems.jsonl");
    let problems = distill_corpus::synthetic::ArithmeticTask::default().generate(20, 3);
    let text: Vec<String> = problems
        .iter()
        .map(|p| serde_json::to_string(p).expect("serializable"))
        .collect();
    fs::write(&path, text.join("\n") + "\n").expect("write");
    assert_same(
        &load_problems(&source(&path, None)).expect("loads"),
        &problems,
        "round trip",
    );
    let limited = load_problems(&ProblemSource {
        limit: Some(5),
        ..source(&path, None)
    })
    .expect("loads");
    assert_same(&limited, &problems[..5], "limit");
}

#[test]
fn presets_parse_and_serialize_lowercase() {
    assert_eq!("gsm8k".parse::<Preset>().ok(), Some(Preset::Gsm8k));
    assert_eq!("MATH".parse::<Preset>().ok(), Some(Preset::Math));
    assert_eq!("math-500".parse::<Preset>().ok(), Some(Preset::Math));
    let err = "aime".parse::<Preset>().expect_err("unknown preset");
    assert!(err.to_string().contains("`aime`"), "{err}");
    assert_eq!(
        serde_json::to_string(&Preset::Gsm8k).ok().as_deref(),
        Some("\"gsm8k\"")
    );
    assert_eq!(
        serde_json::from_str::<Preset>("\"math\"").ok(),
        Some(Preset::Math)
    );
    let src: ProblemSource =
        serde_json::from_str(r#"{"path": "x.jsonl", "preset": "gsm8k", "prompt_col": null, "answer_col": null, "id_col": null, "solution_col": null, "source_name": null, "limit": 3}"#)
            .expect("deserializable");
    assert_eq!((src.preset, src.limit), (Some(Preset::Gsm8k), Some(3)));
}

/// Loads `contents` written to `name` in a fresh folder and returns the error message.
fn load_error(
    name: &str,
    contents: &[u8],
    src: impl Fn(PathBuf) -> ProblemSource,
) -> (Error, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    fs::write(&path, contents).expect("write");
    let err = load_problems(&src(path)).expect_err("bad input is an error");
    let message = err.to_string();
    (err, message)
}

#[test]
fn missing_column_is_named_with_the_columns_present() {
    let (err, msg) = load_error("p.jsonl", b"{\"text\": \"hi\", \"label\": 1}\n", |p| {
        source(p, None)
    });
    assert!(matches!(err, Error::MissingColumn { .. }), "{err:?}");
    assert!(
        msg.contains("`prompt`") && msg.contains("`text`") && msg.contains("`label`"),
        "{msg}"
    );

    let (_, msg) = load_error("p.jsonl", b"{\"question\": \"hi\"}\n", |p| {
        source(p, Some(Preset::Gsm8k))
    });
    assert!(
        msg.contains("`answer`") && msg.contains("`question`"),
        "{msg}"
    );

    let (_, msg) = load_error("p.jsonl", b"{\"prompt\": \"hi\"}\n", |p| ProblemSource {
        answer_col: Some("gold".into()),
        ..source(p, None)
    });
    assert!(msg.contains("`gold`"), "{msg}");

    let dir = tempfile::tempdir().expect("temp dir");
    let pq = dir.path().join("p.parquet");
    write_parquet(
        &pq,
        vec![("text", Arc::new(StringArray::from(vec!["a"])) as ArrayRef)],
    );
    let msg = load_problems(&source(&pq, Some(Preset::Math)))
        .expect_err("missing column")
        .to_string();
    assert!(msg.contains("`problem`") && msg.contains("`text`"), "{msg}");
}

#[test]
fn bad_files_give_clear_errors() {
    // Empty files, in both formats, and files of blank lines.
    for name in ["e.jsonl", "e.parquet"] {
        let (err, msg) = load_error(name, b"", |p| source(p, None));
        assert!(matches!(err, Error::NoProblems { .. }), "{name}: {err:?}");
        assert!(msg.contains(name), "{msg}");
    }
    let (err, _) = load_error("blank.jsonl", b"\n  \n", |p| source(p, None));
    assert!(matches!(err, Error::NoProblems { .. }), "{err:?}");

    // A bad JSON line says which line.
    let (err, msg) = load_error(
        "p.jsonl",
        b"{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n{\"prompt\": \n",
        |p| source(p, None),
    );
    assert!(matches!(err, Error::JsonLine { line: 3, .. }), "{err:?}");
    assert!(msg.contains("Line 3"), "{msg}");
    let (err, _) = load_error("p.jsonl", b"[1, 2]\n", |p| source(p, None));
    assert!(
        matches!(err, Error::JsonLine { line: 1, .. } | Error::BadRow { .. }),
        "{err:?}"
    );

    // Non-UTF-8 text says which line.
    let (err, msg) = load_error(
        "p.jsonl",
        b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xff\xfe\"}\n",
        |p| source(p, None),
    );
    assert!(matches!(err, Error::NotUtf8 { line: 2, .. }), "{err:?}");
    assert!(msg.contains("Line 2"), "{msg}");

    // A parquet file that is not parquet.
    let (err, _) = load_error("p.parquet", b"not parquet at all", |p| source(p, None));
    assert!(matches!(err, Error::ParquetRead { .. }), "{err:?}");

    // Duplicate ids name the id.
    let (err, msg) = load_error(
        "p.jsonl",
        b"{\"prompt\": \"a\", \"id\": \"x7\"}\n{\"prompt\": \"b\", \"id\": \"x7\"}\n",
        |p| source(p, None),
    );
    assert!(matches!(err, Error::DuplicateId { .. }), "{err:?}");
    assert!(msg.contains("`x7`"), "{msg}");

    // An empty prompt names its line.
    let (_, msg) = load_error(
        "p.jsonl",
        b"{\"prompt\": \"a\"}\n{\"prompt\": \"\"}\n",
        |p| source(p, None),
    );
    assert!(msg.contains("Line 2") && msg.contains("`prompt`"), "{msg}");

    // GSM8K rows without a `#### ` line.
    let (_, msg) = load_error(
        "g.jsonl",
        b"{\"question\": \"q\", \"answer\": \"just 5\"}\n",
        |p| source(p, Some(Preset::Gsm8k)),
    );
    assert!(msg.contains("####"), "{msg}");

    // A missing file names its path.
    let missing = PathBuf::from("/nonexistent/dir/problems.jsonl");
    let err = load_problems(&source(&missing, None)).expect_err("missing file");
    assert!(
        err.to_string().contains("/nonexistent/dir/problems.jsonl"),
        "{err}"
    );

    // A folder with nothing to read.
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("notes.txt"), "hi").expect("write");
    let err = load_problems(&source(dir.path(), None)).expect_err("empty folder");
    assert!(matches!(err, Error::NoProblems { .. }), "{err:?}");
}

/// A corpus folder as a problem source: the shards its manifest lists (not the JSON files
/// beside them), each problem once by `problem_id`, with its prompt, reference and source.
#[test]
fn a_corpus_folder_gives_each_problem_once() {
    use distill_corpus::record::{self, Record};
    use distill_corpus::shards::{ShardWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let rows: Vec<Record> = [
        ("p1", 0, "3 + 4?", "7"),
        ("p1", 1, "3 + 4?", "7"),
        ("p2", 0, "2 * 5?", "10"),
    ]
    .iter()
    .map(|&(id, i, prompt, answer)| {
        let mut r = Record::sample(id, i, prompt, "thinking", "\\boxed{x}");
        r.reference_answer = Some(answer.into());
        r.source = "openr1".into();
        r
    })
    .collect();
    let mut w = ShardWriter::create(&corpus, record::schema(), WriterOptions::default()).unwrap();
    w.write(&record::records_to_batch(&rows).unwrap()).unwrap();
    w.finish().unwrap();
    // What a pass writes beside its shards.
    fs::write(corpus.join("summary.json"), "{\n  \"rows\": 3\n}\n").unwrap();
    let problems = load_problems(&source(&corpus, None)).unwrap();
    let got: Vec<(&str, &str, Option<&str>, &str)> = problems
        .iter()
        .map(|p| {
            (
                p.id.as_str(),
                p.prompt.as_str(),
                p.reference_answer.as_deref(),
                p.source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("p1", "3 + 4?", Some("7"), "openr1"),
            ("p2", "2 * 5?", Some("10"), "openr1")
        ]
    );
    let limited = ProblemSource {
        limit: Some(1),
        ..source(&corpus, None)
    };
    assert_eq!(load_problems(&limited).unwrap().len(), 1);
}
