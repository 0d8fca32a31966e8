//! `distill compare` end to end through the binary on the tiny random GGUF fixtures (a 256-token
//! byte-level tokenizer and a ChatML template): the report's structure and exact counts, the
//! generation cache (an added model is the only one generated for; a changed model is
//! regenerated), and bad input failing before any work. The models are random, so accuracy is
//! asserted only to be a consistent number, never a level.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use distill_corpus::record::{records_from_batch, Record};
use distill_corpus::shards::{Manifest, ShardReader};
use serde_json::Value;

const PROBLEMS: usize = 3;
const SAMPLES: usize = 2;
const MAX_NEW: u64 = 12;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures")
        .join(name)
}

mod common;
use common::{failing, ok};

fn write_problems(dir: &Path) -> PathBuf {
    let path = dir.join("eval.jsonl");
    let rows = [
        r#"{"id": "add", "prompt": "What is 2 + 3?", "answer": "5"}"#,
        r#"{"id": "sub", "prompt": "What is 7 - 4?", "answer": "3"}"#,
        r#"{"id": "mul", "prompt": "What is 6 * 2?", "answer": "12"}"#,
    ];
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    path
}

/// Runs `distill compare` on `models` (each `--labels` entry given as is) into `out`, with
/// `SAMPLES` samples per problem unless `extra` says otherwise.
fn compare(models: &[&Path], labels: &[String], problems: &Path, out: &Path, extra: &[&str]) {
    let samples = match extra.iter().position(|a| *a == "--samples") {
        Some(i) => extra[i + 1].to_string(),
        None => SAMPLES.to_string(),
    };
    let mut args: Vec<String> = vec!["compare".into(), "--models".into()];
    args.extend(models.iter().map(|m| m.display().to_string()));
    args.extend([
        "--problems".into(),
        problems.display().to_string(),
        "--samples".into(),
        samples,
        "--max-new-tokens".into(),
        MAX_NEW.to_string(),
        "--batch".into(),
        "4".into(),
        "--out".into(),
        out.display().to_string(),
    ]);
    if !labels.is_empty() {
        args.push("--labels".into());
        args.extend(labels.iter().cloned());
    }
    let mut rest = extra.iter();
    while let Some(a) = rest.next() {
        if *a == "--samples" {
            rest.next();
        } else {
            args.push(a.to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
}

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

fn model<'a>(report: &'a Value, label: &str) -> &'a Value {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["label"] == label)
        .unwrap_or_else(|| panic!("no model `{label}` in {report}"))
}

fn cached_records(dir: &Path) -> Vec<Record> {
    let manifest = Manifest::read(dir).unwrap().expect("a manifest");
    let files: Vec<PathBuf> = manifest.shards.iter().map(|s| dir.join(&s.file)).collect();
    let reader = ShardReader::open(&files).unwrap();
    reader
        .batches()
        .flat_map(|b| records_from_batch(&b.unwrap()).unwrap())
        .collect()
}

/// Modification times of a cache folder's parquet shards.
fn shard_mtimes(dir: &Path) -> Vec<(String, SystemTime)> {
    let mut v: Vec<(String, SystemTime)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), t)
        })
        .collect();
    v.sort();
    v
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|_| panic!("{} missing", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{}",
        path.display()
    );
    // IHDR: width and height (big-endian) right after the chunk header.
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(width >= 600 && height >= 400, "{width}×{height}");
}

#[test]
fn report_structure_and_exact_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let out = tmp.path().join("out");
    let (teacher, student) = (fixture("tiny-qwen2.gguf"), fixture("tiny-llama.gguf"));
    let note = "The teacher stands in for DeepSeek-R1.";
    compare(
        &[&teacher, &student],
        &[],
        &problems,
        &out,
        &["--note", &format!("  {note}\n")],
    );

    let r = report(&out);
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["note"], note, "the note is kept, trimmed");
    assert_eq!(r["teacher"], "tiny-qwen2");
    assert_eq!(r["problems"]["count"], PROBLEMS);
    assert_eq!(r["protocol"]["samples"], SAMPLES);
    assert_eq!(r["protocol"]["k"], SAMPLES);
    assert_eq!(r["protocol"]["max_new_tokens"], MAX_NEW);
    assert!((r["protocol"]["temperature"].as_f64().unwrap() - 0.6).abs() < 1e-6);
    assert!((r["protocol"]["top_p"].as_f64().unwrap() - 0.95).abs() < 1e-6);
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["role"], "teacher");
    assert_eq!(models[1]["role"], "student");
    for (m, path) in [(&models[0], &teacher), (&models[1], &student)] {
        let label = m["label"].as_str().unwrap();
        assert_eq!(m["samples"], PROBLEMS * SAMPLES, "{label}");
        assert_eq!(m["problems"], PROBLEMS, "{label}");
        assert_eq!(m["scored_problems"], PROBLEMS, "{label}");
        assert_eq!(m["backend"], "local");
        assert_eq!(m["reasoning_tokens_method"], "tokenizer");
        assert_eq!(
            m["bytes_on_disk"].as_u64(),
            Some(std::fs::metadata(path).unwrap().len())
        );
        assert!(m["parameters"].as_u64().unwrap() > 10_000, "{label}");
        for key in ["pass_at_1", "cons_at_k", "truncation_rate"] {
            let v = m[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{label}: {key} = {}", m[key]));
            assert!((0.0..=1.0).contains(&v), "{label}: {key} = {v}");
        }
        assert!(m["pass_at_1_se"].as_f64().is_some());
        assert!(m["tokens_per_second"].as_f64().unwrap() > 0.0);
        assert!(m["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
        assert_eq!(m["cache"]["generated_now"], PROBLEMS * SAMPLES);
        assert_eq!(m["cache"]["cached"], 0);
        assert_eq!(m["cache"]["missing"], 0);

        // The cache holds exactly n × problems rows of the corpus schema, and the report's
        // numbers are those rows' numbers.
        let records = cached_records(&out.join("generations").join(label));
        assert_eq!(records.len(), PROBLEMS * SAMPLES, "{label}");
        let keys: BTreeSet<(String, i32)> = records
            .iter()
            .map(|r| (r.problem_id.clone(), r.sample_index))
            .collect();
        assert_eq!(keys.len(), PROBLEMS * SAMPLES);
        assert!(records.iter().all(|r| r.sample_index < SAMPLES as i32));
        assert!(records.iter().all(|r| r.prompt.contains("\\boxed{}")));
        assert!(records
            .iter()
            .all(|r| (r.temperature - 0.6).abs() < 1e-6 && r.completion_tokens as u64 <= MAX_NEW));
        let tokens: u64 = records.iter().map(|r| r.completion_tokens as u64).sum();
        assert_eq!(m["generated_tokens"].as_u64(), Some(tokens), "{label}");
        let mean = tokens as f64 / records.len() as f64;
        assert!((m["mean_completion_tokens"].as_f64().unwrap() - mean).abs() < 1e-9);
        let truncated = records
            .iter()
            .filter(|r| r.finish_reason == "length")
            .count();
        let rate = truncated as f64 / records.len() as f64;
        assert!((m["truncation_rate"].as_f64().unwrap() - rate).abs() < 1e-9);
        let correct = records.iter().filter(|r| r.correct == Some(true)).count();
        let pass = correct as f64 / records.len() as f64;
        assert!((m["pass_at_1"].as_f64().unwrap() - pass).abs() < 1e-9);
        assert!(m["mean_reasoning_tokens"].as_f64().unwrap() <= mean + 1e-9);
    }
    // Agreement is defined exactly when the teacher has a majority answer somewhere, i.e. when
    // any of its samples has an extracted answer (random models rarely write `\boxed{}`).
    let teacher_records = cached_records(&out.join("generations/tiny-qwen2"));
    let teacher_answers = teacher_records.iter().any(|r| r.final_answer.is_some());
    for m in models {
        let v = m["agreement_with_teacher"].as_f64();
        assert_eq!(v.is_some(), teacher_answers, "{}", m["label"]);
        assert!(v.is_none_or(|v| (0.0..=1.0).contains(&v)));
    }
    // The ratio to the teacher is defined exactly when the teacher solved something.
    let teacher_solved = models[0]["pass_at_1"].as_f64() != Some(0.0);
    assert_eq!(models[0]["pass_at_1_vs_teacher"].is_null(), !teacher_solved);

    for chart in ["accuracy", "reasoning_lengths", "speed_size"] {
        assert_eq!(r["charts"][chart], format!("{chart}.png"));
        assert_png(&out.join(format!("{chart}.png")));
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| model | params | size | pass@1 ± se | cons@2 |"),
        "{md}"
    );
    assert!(md.contains("**tiny-qwen2** (teacher)"));
    assert!(md.contains("**tiny-llama**"));
    assert!(md.contains("![pass@1 and cons@k](accuracy.png)"));
    assert!(md.contains("teacher `tiny-qwen2` scores pass@1"));
    assert!(md.contains(&format!("\n\n{note}\n\n")), "{md}");
}

#[test]
fn an_added_model_is_the_only_one_generated_for() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let out = tmp.path().join("out");
    let teacher = fixture("tiny-qwen2.gguf");
    let student = fixture("tiny-llama.gguf");
    // A second student: a copy under another name (its own identity and label).
    let extra = tmp.path().join("student-b.gguf");
    std::fs::copy(&student, &extra).unwrap();
    let gens = out.join("generations");

    compare(&[&teacher, &student], &[], &problems, &out, &[]);
    let first = report(&out);
    let before = [
        shard_mtimes(&gens.join("tiny-qwen2")),
        shard_mtimes(&gens.join("tiny-llama")),
    ];
    assert!(before.iter().all(|m| !m.is_empty()));

    compare(&[&teacher, &student, &extra], &[], &problems, &out, &[]);
    let second = report(&out);
    for label in ["tiny-qwen2", "tiny-llama"] {
        let m = model(&second, label);
        assert_eq!(m["cache"]["generated_now"], 0, "{label}");
        assert_eq!(m["cache"]["cached"], PROBLEMS * SAMPLES, "{label}");
        // Numbers measured when the samples were generated are kept with them.
        let old = model(&first, label);
        for key in [
            "pass_at_1",
            "tokens_per_second",
            "generated_tokens",
            "peak_rss_bytes",
        ] {
            assert_eq!(m[key], old[key], "{label}: {key}");
        }
    }
    assert_eq!(
        model(&second, "student-b")["cache"]["generated_now"],
        PROBLEMS * SAMPLES
    );
    assert_eq!(model(&second, "student-b")["samples"], PROBLEMS * SAMPLES);
    let after = [
        shard_mtimes(&gens.join("tiny-qwen2")),
        shard_mtimes(&gens.join("tiny-llama")),
    ];
    assert_eq!(before, after, "cached shards were rewritten");

    // More samples per problem: only the new sample indices are generated.
    compare(&[&teacher], &[], &problems, &out, &["--samples", "3"]);
    let third = report(&out);
    let m = model(&third, "tiny-qwen2");
    assert_eq!(m["cache"]["generated_now"], PROBLEMS);
    assert_eq!(m["samples"], PROBLEMS * 3);

    // A changed model file (same bytes, new modification time) is regenerated from scratch.
    let bytes = std::fs::read(&extra).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&extra, bytes).unwrap();
    compare(&[&teacher, &extra], &[], &problems, &out, &[]);
    let fourth = report(&out);
    assert_eq!(model(&fourth, "tiny-qwen2")["cache"]["generated_now"], 0);
    let b = model(&fourth, "student-b");
    assert_eq!(b["cache"]["cleared"], true);
    assert_eq!(b["cache"]["generated_now"], PROBLEMS * SAMPLES);
}

#[test]
fn labels_name_models_and_their_cache_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let out = tmp.path().join("out");
    let teacher = fixture("tiny-qwen2.gguf");
    let labels = vec![format!("big={}", teacher.display())];
    compare(&[&teacher], &labels, &problems, &out, &["--k", "1"]);
    let r = report(&out);
    assert_eq!(r["teacher"], "big");
    assert!(r.get("note").is_none(), "no --note, no note key");
    assert_eq!(r["protocol"]["k"], 1);
    assert_eq!(model(&r, "big")["k"], 1);
    assert_eq!(
        cached_records(&out.join("generations/big")).len(),
        PROBLEMS * SAMPLES
    );
    // The R1 prefill by default; `--prefill ""` for models that do not reason in a think block.
    assert_eq!(r["protocol"]["prefill"], "<think>\n");
    let plain = tmp.path().join("plain");
    compare(
        &[&teacher],
        &[],
        &problems,
        &plain,
        &["--k", "1", "--prefill", ""],
    );
    assert_eq!(report(&plain)["protocol"]["prefill"], "");
}

#[test]
fn bad_input_fails_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let out = tmp.path().join("out");
    let teacher = fixture("tiny-qwen2.gguf").display().to_string();
    let out_s = out.display().to_string();
    let problems_s = problems.display().to_string();
    let missing_model = tmp.path().join("no-such-model.gguf").display().to_string();
    let missing_eval = tmp.path().join("no-such-eval.jsonl").display().to_string();

    let err = failing(&[
        "compare",
        "--models",
        &teacher,
        &missing_model,
        "--problems",
        &problems_s,
        "--out",
        &out_s,
    ]);
    assert!(
        err.contains(&missing_model) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!out.exists(), "work started despite a missing model");

    let err = failing(&[
        "compare",
        "--models",
        &teacher,
        "--problems",
        &missing_eval,
        "--out",
        &out_s,
    ]);
    assert!(
        err.contains(&missing_eval) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!out.exists(), "work started despite a missing eval file");

    let err = failing(&[
        "compare",
        "--models",
        &teacher,
        "--problems",
        &problems_s,
        "--out",
        &out_s,
        "--k",
        "9",
    ]);
    assert!(err.contains("--k"), "{err}");
    assert!(!out.exists());
}

#[test]
fn exports_get_a_laptop_table() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let source = fixture("tiny-llama.gguf");
    let mut files = Vec::new();
    for quant in ["f32", "f16", "q8_0"] {
        let file = tmp.path().join(format!("student.{quant}.gguf"));
        ok(&[
            "export",
            source.to_str().unwrap(),
            "--gguf",
            file.to_str().unwrap(),
            "--quant",
            quant,
        ]);
        files.push(file);
    }
    let out = tmp.path().join("out");
    let labels = vec![
        format!("f32={}", files[0].display()),
        format!("f16={}", files[1].display()),
        format!("q8={}", files[2].display()),
    ];
    compare(
        &[&files[0], &files[1], &files[2]],
        &labels,
        &problems,
        &out,
        &[],
    );
    let r = report(&out);
    assert_eq!(model(&r, "f32")["weights"], "F32");
    assert_eq!(model(&r, "f16")["weights"], "F16");
    assert_eq!(model(&r, "q8")["weights"], "Q8_0");
    assert_eq!(model(&r, "q8")["gguf"], true);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let table = md.split("### On a laptop").nth(1).expect("a laptop table");
    let row = |label: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| **{label}**")))
            .unwrap_or_else(|| panic!("no row `{label}` in {table}"))
            .to_string()
    };
    // The f32 file is the reference (most bits per weight); the others are measured against it.
    assert!(row("f32").contains("| F32 |"), "{}", row("f32"));
    assert!(row("f32").ends_with("| reference |"), "{}", row("f32"));
    assert!(row("q8").contains("| Q8_0 |"), "{}", row("q8"));
    assert!(row("q8").contains("points vs `f32`"), "{}", row("q8"));
    assert!(row("f16").contains("points vs `f32`"), "{}", row("f16"));

    // Without a GGUF file there is no laptop table.
    let folder = tmp.path().join("folder");
    ok(&[
        "convert",
        source.to_str().unwrap(),
        folder.to_str().unwrap(),
    ]);
    let plain = tmp.path().join("plain");
    compare(&[&folder], &[], &problems, &plain, &[]);
    let md = std::fs::read_to_string(plain.join("report.md")).unwrap();
    assert!(!md.contains("On a laptop"), "{md}");
    assert_eq!(report(&plain)["models"][0]["weights"], "f32");
}

/// A sample the model cannot generate (its prompt fills the 128-position context of the Qwen3
/// fixture) is left out of the metrics, and the run says so on stderr with the reason, instead
/// of a report with a silent gap.
#[test]
fn failed_samples_are_named_with_their_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = tmp.path().join("eval.jsonl");
    let long = "Tom has 3 apples and buys 4 more apples at the market. ".repeat(4);
    let row = serde_json::json!({"id": "long", "prompt": long, "answer": "7"});
    std::fs::write(&problems, row.to_string()).unwrap();
    let out = tmp.path().join("report");
    let model = fixture("tiny-qwen3.gguf");
    let run = common::distill(&[
        "compare",
        "--models",
        model.to_str().unwrap(),
        "--problems",
        problems.to_str().unwrap(),
        "--samples",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning: model `tiny-qwen3`: 1 sample failed (the last, long/0: ")
            && stderr.contains("context of 128 positions")
            && stderr.contains("its metrics leave them out (a rerun would fail them again)"),
        "{stderr}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("1 sample is missing (its request failed)"),
        "{report}"
    );
}
