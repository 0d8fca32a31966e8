//! `distill train` end to end: a from-scratch student on a tiny corpus (written with the corpus
//! crate's shard writer) becomes a Hugging Face folder that `distill inspect` reads with the
//! requested architecture; metrics, loss curve and resolved config land beside it; a run
//! resumed from its middle checkpoint ends with the same weights; bad input fails in one line.

mod common;
use common::run_ok;

use std::path::{Path, PathBuf};
use std::process::Command;

use distill_corpus::record::{self, Record};
use distill_corpus::shards::{ShardWriter, WriterOptions};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distill"))
}

fn record(i: usize) -> Record {
    let (a, b) = (5 + i % 20, 2 + i % 9);
    let prompt = format!("Tom has {a} apples and buys {b} more. How many apples?");
    let reasoning = format!("{a} + {b} = {}", a + b);
    let completion = format!("\\boxed{{{}}}", a + b);
    Record {
        final_answer: Some((a + b).to_string()),
        reference_answer: Some((a + b).to_string()),
        correct: Some(true),
        teacher: "test".into(),
        seed: i as u64,
        ..Record::sample(&format!("q{i}"), 0, &prompt, &reasoning, &completion)
    }
}

fn write_corpus(dir: &Path, rows: usize) -> PathBuf {
    let out = dir.join("corpus");
    let records: Vec<Record> = (0..rows).map(record).collect();
    let mut w = ShardWriter::create(&out, record::schema(), WriterOptions::default()).unwrap();
    w.write(&record::records_to_batch(&records).unwrap())
        .unwrap();
    w.finish().unwrap();
    out
}

fn train_cmd(corpus: &Path, out: &Path) -> Command {
    train_cmd_with(corpus, out, &[])
}

/// The training command with some of its default flag values replaced.
fn train_cmd_with(corpus: &Path, out: &Path, replace: &[(&str, &str)]) -> Command {
    let mut cmd = train_cmd_shown(corpus, out, replace);
    cmd.arg("--quiet");
    cmd
}

/// The training command with its progress display on.
fn train_cmd_shown(corpus: &Path, out: &Path, replace: &[(&str, &str)]) -> Command {
    let mut cmd = bin();
    cmd.args(["--threads", "1", "train", "--from-scratch"]);
    cmd.arg("--corpus").arg(corpus).arg("--out").arg(out);
    let defaults = [
        ("--vocab-size", "60"),
        ("--hidden-size", "32"),
        ("--layers", "1"),
        ("--heads", "2"),
        ("--kv-heads", "1"),
        ("--intermediate-size", "48"),
        ("--max-seq-len", "128"),
        ("--max-steps", "6"),
        ("--micro-batch-size", "2"),
        ("--eval-every", "3"),
        ("--checkpoint-every", "3"),
        ("--eval-fraction", "0.2"),
        ("--lr", "0.005"),
        ("--seed", "11"),
    ];
    for (flag, value) in defaults {
        let value = replace
            .iter()
            .find(|(f, _)| *f == flag)
            .map_or(value, |(_, v)| v);
        cmd.args([flag, value]);
    }
    cmd
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn from_scratch_run_writes_a_folder_inspect_reads() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 30);
    let out = dir.path().join("run");
    let first = run_ok(&mut train_cmd(&corpus, &out));
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(said.contains("Wrote the token cache"), "{said}");
    assert_eq!(
        std::fs::read_dir(out.join("token-cache")).unwrap().count(),
        1
    );

    let model = out.join("model");
    let inspect = run_ok(bin().arg("inspect").arg(&model).arg("--json"));
    let r: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["hidden_size"], 32);
    assert_eq!(r["layers"], 1);
    assert_eq!(r["attention_heads"], 2);
    assert_eq!(r["kv_heads"], 1);
    assert_eq!(r["intermediate_size"], 48);
    assert_eq!(r["tie_word_embeddings"], true);
    assert_eq!(r["chat_template"], true);
    assert_eq!(r["vocab_size"], r["tokenizer_vocab_size"]);
    assert!(r["vocab_size"].as_u64().unwrap() <= 60);
    let eos: Vec<&str> = r["eos_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["text"].as_str())
        .collect();
    assert!(eos.contains(&"<|im_end|>"), "{eos:?}");

    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("loss").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    let evals = lines
        .iter()
        .filter(|l| l.get("eval_loss").is_some())
        .count();
    assert_eq!(evals, 2, "{metrics}");
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    let config = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(config.contains("from_scratch = true"), "{config}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["rows"], 30);

    // A finished run resumed is a no-op; the same --out without --resume is refused.
    run_ok(train_cmd(&corpus, &out).arg("--resume"));
    let err = run_err(&mut train_cmd(&corpus, &out));
    assert!(err.contains("already exists"), "{err}");

    // Resume from the middle: drop the final folder and the step-6 checkpoint, continue from
    // step 3, and end with the same weights.
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::remove_dir_all(&model).unwrap();
    common::drop_newest_checkpoint(&out.join("checkpoints"));
    let err = run_err(&mut train_cmd(&corpus, &out));
    assert!(err.contains("--resume"), "{err}");
    let resumed = run_ok(train_cmd(&corpus, &out).arg("--resume"));
    let said = String::from_utf8_lossy(&resumed.stderr);
    assert!(said.contains("Resuming"), "{said}");
    // The resumed run reads the corpus' tokens from the cache the first run wrote.
    assert!(said.contains("Reusing the token cache"), "{said}");
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        weights
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps = metrics.lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(steps, 6, "{metrics}");
}

/// The checkpoint after the last step cannot be written (a full disk in real life; here a file
/// where its folder is assembled): the run still writes its model, the same as an unhindered
/// run's, says in one line that it cannot resume from that step, and keeps the earlier
/// checkpoint.
#[test]
fn a_final_checkpoint_that_cannot_be_written_keeps_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 30);
    let clean = dir.path().join("clean");
    run_ok(&mut train_cmd(&corpus, &clean));

    let out = dir.path().join("run");
    std::fs::create_dir_all(out.join("checkpoints")).unwrap();
    std::fs::write(out.join("checkpoints/.step-00000006.partial"), "in the way").unwrap();
    let done = run_ok(&mut train_cmd(&corpus, &out));
    let said = String::from_utf8_lossy(&done.stderr);
    assert!(
        said.contains("warning: the checkpoint of step 6 was not written"),
        "{said}"
    );
    assert!(said.contains(".step-00000006.partial"), "{said}");
    assert_eq!(
        std::fs::read(out.join("model/model.safetensors")).unwrap(),
        std::fs::read(clean.join("model/model.safetensors")).unwrap()
    );
    assert!(out.join("checkpoints/step-00000003").is_dir());
    assert!(!out.join("checkpoints/step-00000006").exists());
}

#[test]
fn config_typos_and_bad_values_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 8);
    let config = dir.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "corpus = {:?}\nout = {:?}\nfrom_scratch = true\n[train.schedule]\nlearning_rate = 0.1\n",
            corpus,
            dir.path().join("o")
        ),
    )
    .unwrap();
    let err = run_err(bin().arg("train").arg("--config").arg(&config));
    assert!(
        err.contains("learning_rate") && err.contains("train.toml"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let err = run_err(&mut train_cmd_with(
        &corpus,
        &dir.path().join("o2"),
        &[("--lr", "5")],
    ));
    assert!(err.contains("`schedule.lr`"), "{err}");

    let err = run_err(
        bin()
            .args(["train", "--from-scratch"])
            .arg("--out")
            .arg(dir.path()),
    );
    assert!(err.contains("--corpus"), "{err}");
}

#[test]
fn a_corpus_without_usable_rows_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 8);
    let err = run_err(&mut train_cmd_with(
        &corpus,
        &dir.path().join("o"),
        &[("--max-seq-len", "10")],
    ));
    assert!(err.contains("all `8` corpus rows were dropped"), "{err}");
    assert!(err.contains("longer than `max_seq_len`"), "{err}");
}

#[test]
fn a_gguf_base_is_fine_tuned_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 6);
    let out = dir.path().join("run");
    let base =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/tiny-llama.gguf");
    let mut cmd = bin();
    cmd.args(["--threads", "1", "train", "--quiet", "--max-steps", "2"]);
    cmd.args([
        "--micro-batch-size",
        "2",
        "--max-seq-len",
        "128",
        "--eval-fraction",
        "0",
    ]);
    cmd.arg("--base")
        .arg(&base)
        .arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(&out);
    run_ok(&mut cmd);
    let base_report = run_ok(bin().arg("inspect").arg(&base).arg("--json"));
    let base_report: serde_json::Value = serde_json::from_slice(&base_report.stdout).unwrap();
    let inspect = run_ok(bin().arg("inspect").arg(out.join("model")).arg("--json"));
    let r: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    for key in [
        "architecture",
        "parameters",
        "vocab_size",
        "hidden_size",
        "layers",
    ] {
        assert_eq!(r[key], base_report[key], "{key}");
    }
    assert_eq!(r["chat_template"], true);
    assert!(r["tensor_types"]["f32"].as_u64().is_some());
}

/// `--keep-layers`: a student cut from a base's layers (the teacher's embeddings and some of its
/// layers) trains and is written with that many layers; impossible selections fail in one line
/// before any work. (The cut itself is checked against transformers in `models/tests/prune.rs`.)
#[test]
fn a_base_cut_to_some_of_its_layers_trains() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 6);
    let base =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/tiny-qwen2.gguf");
    let train = |out: &Path, keep: &str, steps: &str| {
        let mut cmd = bin();
        cmd.args(["--threads", "1", "train", "--quiet", "--max-steps", steps]);
        cmd.args(["--micro-batch-size", "2", "--max-seq-len", "128"]);
        cmd.args(["--eval-fraction", "0", "--keep-layers", keep]);
        cmd.arg("--base").arg(&base).arg("--corpus").arg(&corpus);
        cmd.arg("--out").arg(out);
        cmd
    };
    let out = dir.path().join("run");
    let ok = run_ok(train(&out, "1", "3").args(["--checkpoint-every", "2"]));
    let said = String::from_utf8_lossy(&ok.stderr);
    assert!(said.contains("Student: layers 1 of the base's 2"), "{said}");
    let settings = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(settings.contains("keep_layers = [1]"), "{settings}");
    // Resumed from its step-2 checkpoint (cut the same way before the checkpoint's weights load).
    std::fs::remove_dir_all(out.join("model")).unwrap();
    std::fs::remove_dir_all(out.join("checkpoints/step-00000003")).unwrap();
    let ok = run_ok(train(&out, "1", "3").args(["--checkpoint-every", "2", "--resume"]));
    let said = String::from_utf8_lossy(&ok.stderr);
    assert!(said.contains("step-00000002"), "{said}");
    let inspect = run_ok(bin().arg("inspect").arg(out.join("model")).arg("--json"));
    let r: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(r["layers"], 1);

    for (keep, says) in [
        (
            "0,2",
            "`keep_layers` 0,2: cannot keep layer 2: the model has 2 layers (0-1)",
        ),
        ("1,0", "layers to keep must be increasing"),
        ("0-x", "`x` is not a layer index"),
    ] {
        let err = run_err(&mut train(&dir.path().join("bad"), keep, "2"));
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert!(
            errors.len() == 1 && errors[0].contains(says),
            "{keep}: {err}"
        );
        assert!(!err.contains("caused by"), "{err}");
    }
    assert!(!dir.path().join("bad/model").exists());
    let err = run_err(
        train_cmd_with(&corpus, &dir.path().join("scratch"), &[]).args(["--keep-layers", "0"]),
    );
    assert!(
        err.contains("`keep_layers` picks layers of a base model"),
        "{err}"
    );
}

/// Under nohup or a scheduler stderr is no terminal and a bar cannot draw: plain progress
/// lines come at the interval instead (here 1 ms), with the count, rate, ETA and a last line,
/// and the held-out losses printed above the bar are not lost.
#[test]
fn without_a_terminal_progress_is_printed_as_lines() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 30);
    let out = dir.path().join("student");
    let output = train_cmd_shown(&corpus, &out, &[])
        .env("DISTILL_PROGRESS_INTERVAL", "0.001")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("train: "))
        .collect();
    let periodic: Vec<&&str> = lines.iter().filter(|l| l.contains(" · ETA ")).collect();
    assert!(!periodic.is_empty(), "{stderr}");
    for line in &periodic {
        assert!(line.contains("/6 steps ("), "{line}");
        assert!(line.contains(" · elapsed 0:00:"), "{line}");
    }
    let last = lines.last().unwrap();
    assert!(last.starts_with("train: 6/6 steps (100%)"), "{last}");
    assert!(last.ends_with(" · done"), "{last}");
    assert!(last.contains(" steps/s"), "{last}");
    assert!(stderr.contains("step 3: held-out loss"), "{stderr}");
}

/// A teacher trained `teacher_steps` steps and a student start trained one, in `dir/teacher`
/// and `dir/start`: the same corpus, seed and tokenizer settings give both the same tokenizer.
fn teacher_and_student(dir: &Path, corpus: &Path, teacher_steps: &str) -> (PathBuf, PathBuf) {
    let (teacher, start) = (dir.join("teacher"), dir.join("start"));
    run_ok(&mut train_cmd_with(
        corpus,
        &teacher,
        &[("--max-steps", teacher_steps), ("--lr", "0.01")],
    ));
    run_ok(&mut train_cmd_with(corpus, &start, &[("--max-steps", "1")]));
    (teacher, start)
}

/// The `kd` values of `metrics.jsonl`, step by step.
fn kd_per_step(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["kd"].as_f64().expect("a distillation step reports `kd`"))
        .collect()
}

/// Logit distillation: a student whose teacher is itself starts at a divergence of zero; a
/// student distilled from a better-trained teacher (same tokenizer) closes the gap step by
/// step; a teacher with another vocabulary is refused before training, naming the first id
/// that differs; KD flags without a teacher and KD under the TRL engine are refused.
#[test]
fn logit_distillation_from_a_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 30);
    let (teacher, start) = teacher_and_student(dir.path(), &corpus, "40");
    let distil = |out: &Path, base: &Path, steps: &str| {
        let mut cmd = bin();
        cmd.args(["--threads", "1", "train", "--quiet", "--max-steps", steps]);
        cmd.args(["--micro-batch-size", "4", "--max-seq-len", "128"]);
        cmd.args(["--eval-fraction", "0", "--lr", "0.01", "--kd-weight", "1"]);
        cmd.arg("--base").arg(base.join("model"));
        cmd.arg("--kd-teacher").arg(teacher.join("model"));
        cmd.arg("--corpus").arg(&corpus).arg("--out").arg(out);
        cmd
    };

    let same = dir.path().join("same");
    run_ok(&mut distil(&same, &teacher, "1"));
    let kd = kd_per_step(&same);
    assert_eq!(kd.len(), 1);
    assert!(
        kd[0].abs() < 1e-6,
        "teacher = student: divergence {}",
        kd[0]
    );

    let student = dir.path().join("student");
    let said = run_ok(&mut distil(&student, &start, "12"));
    assert!(
        String::from_utf8_lossy(&said.stderr).contains("Distilling from"),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    let kd = kd_per_step(&student);
    assert_eq!(kd.len(), 12);
    assert!(kd[0] > 0.05, "an untrained student differs: {kd:?}");
    assert!(kd[11] < 0.5 * kd[0], "the divergence falls: {kd:?}");
    let config = std::fs::read_to_string(student.join("train_config.toml")).unwrap();
    assert!(
        config.contains("[train.kd]") && config.contains("weight = 1.0"),
        "{config}"
    );

    let other = dir.path().join("other");
    run_ok(&mut train_cmd_with(
        &corpus,
        &other,
        &[("--max-steps", "1"), ("--vocab-size", "70")],
    ));
    let mut cmd = distil(&dir.path().join("refused"), &other, "1");
    let err = run_err(&mut cmd);
    assert!(
        err.contains("do not share a tokenizer") && err.contains("id "),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
    assert!(
        err.trim().lines().last().unwrap().contains("id 60"),
        "{err}"
    );
    assert!(!dir.path().join("refused").join("token-cache").exists());

    // A from-scratch student with the teacher's tokenizer distils from it too.
    let scratch = dir.path().join("scratch");
    let mut cmd = train_cmd_with(&corpus, &scratch, &[("--max-steps", "3")]);
    cmd.arg("--tokenizer").arg(teacher.join("model"));
    cmd.arg("--kd-teacher").arg(teacher.join("model"));
    run_ok(&mut cmd);
    assert_eq!(kd_per_step(&scratch).len(), 3);
    assert_eq!(
        std::fs::read_to_string(scratch.join("model/tokenizer.json")).unwrap(),
        std::fs::read_to_string(teacher.join("model/tokenizer.json")).unwrap()
    );
    let mut cmd = bin();
    cmd.args([
        "train",
        "--base",
        "b",
        "--tokenizer",
        "t",
        "--corpus",
        "c",
        "--out",
        "o",
    ]);
    assert!(run_err(&mut cmd).contains("drop `--tokenizer`"));

    let mut cmd = train_cmd_with(&corpus, &dir.path().join("x"), &[]);
    cmd.args(["--kd-beta", "0.5"]);
    assert!(run_err(&mut cmd).contains("need a teacher"));
    let mut cmd = bin();
    cmd.args(["train", "--engine", "trl", "--dry-run", "--kd-teacher", "t"]);
    cmd.args(["--base", "b", "--corpus", "c", "--out", "o"]);
    assert!(run_err(&mut cmd).contains("distill's own trainer"));
}

/// One generation pass feeds logit distillation: a small trained model generates a corpus with
/// `--logprobs 4`; `train --kd-from-corpus` of a student with its tokenizer finds the teacher's
/// tokens in the documents, reports the divergence at each step and brings it down; the
/// teacher as its own student starts at zero (to float16 rounding); a corpus without the
/// columns is refused by name.
#[test]
fn a_corpus_with_logprobs_distils_without_the_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), 30);
    let (teacher, start) = teacher_and_student(dir.path(), &corpus, "60");
    let problems = dir.path().join("problems.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let (a, b) = (5 + i % 20, 2 + i % 9);
            serde_json::json!({
                "id": format!("p{i}"),
                "problem": format!("Tom has {a} apples and buys {b} more. How many apples?"),
                "answer": (a + b).to_string(),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&problems, lines.join("\n")).unwrap();
    let generate = |out: &Path, extra: &[&str]| {
        let mut cmd = bin();
        cmd.args(["--threads", "1", "generate", "--samples", "2"]);
        cmd.arg("--problems").arg(&problems).arg("--out").arg(out);
        cmd.arg("--model").arg(teacher.join("model"));
        cmd.args(["--temperature", "0.7", "--max-new-tokens", "40"]);
        cmd.args(["--user-template", "{problem}", "--batch", "8"]);
        cmd.args(extra);
        cmd
    };
    let generated = dir.path().join("generated");
    run_ok(&mut generate(&generated, &["--logprobs", "4"]));
    let settings = dir.path().join("kd.toml");
    // The small teacher does not always end its turn within 40 tokens: keep those samples.
    std::fs::write(&settings, "[data]\nkeep_truncated = true\n").unwrap();
    let distil_from = |corpus: &Path, base: &Path, out: &Path, steps: &str| {
        let mut cmd = bin();
        cmd.args(["--threads", "1", "train", "--quiet", "--kd-from-corpus"]);
        cmd.args(["--kd-weight", "1", "--max-steps", steps, "--lr", "0.01"]);
        cmd.args(["--micro-batch-size", "4", "--max-seq-len", "128"]);
        cmd.args(["--eval-fraction", "0"]);
        cmd.arg("--config").arg(&settings);
        cmd.arg("--base").arg(base.join("model"));
        cmd.arg("--corpus").arg(corpus).arg("--out").arg(out);
        cmd
    };
    let distil = |base: &Path, out: &Path, steps: &str| distil_from(&generated, base, out, steps);
    let student = dir.path().join("student");
    let said = run_ok(&mut distil(&start, &student, "12"));
    let said = String::from_utf8_lossy(&said.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(student.join("data_report.json")).unwrap())
            .unwrap();
    let (targets, tokens) = (
        report["teacher_targets"].as_u64().unwrap(),
        report["teacher_tokens"].as_u64().unwrap(),
    );
    assert!(
        said.contains(&format!("{targets} of {tokens} generated tokens")),
        "{said}"
    );
    // The small teacher's samples sometimes re-tokenise differently where its sampled tokens
    // are not the tokenizer's own split (runs of newlines) or where the `<think>` block is
    // re-assembled around its stray tags: the targets stop there.
    assert!(targets * 4 >= tokens * 3, "{targets} of {tokens} aligned");
    assert_eq!(report["teacher_aligned"], 24, "{report}");
    let kd = kd_per_step(&student);
    assert_eq!(kd.len(), 12);
    assert!(kd[11] < 0.5 * kd[0], "the divergence falls: {kd:?}");

    let itself = dir.path().join("itself");
    run_ok(&mut distil(&teacher, &itself, "1"));
    let self_kd = kd_per_step(&itself);
    assert!(
        self_kd[0] < 1e-3 * kd[0],
        "the teacher against its own stored distributions: {self_kd:?} vs {kd:?}"
    );

    let plain = dir.path().join("plain");
    run_ok(&mut generate(&plain, &[]));
    let err = run_err(&mut distil_from(
        &plain,
        &start,
        &dir.path().join("refused"),
        "1",
    ));
    assert!(
        err.contains("no teacher log-probabilities") && err.contains("--logprobs"),
        "{err}"
    );
}
