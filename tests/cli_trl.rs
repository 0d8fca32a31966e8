//! `distill train --engine trl --dry-run` end to end on the CPU: a tiny base model (trained
//! from scratch by distill, so it has a tokenizer and a template) and a corpus of several
//! samples per problem become a TRL job folder whose dataset holds exactly the conversations
//! distill's own trainer trains on and holds out (the same rows dropped, the same problems held
//! out), whose `max_length` comes from their token lengths, and whose recipe, accelerate config
//! and scripts say what the settings say. Bad combinations fail in one line before any work.

mod common;
use common::run_ok;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use distill_corpus::record::{self, Record};
use distill_corpus::shards::{ShardWriter, WriterOptions};
use distill_student::data;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distill"))
}

/// Sample `sample` of problem `p`: problems 0..n, each with a prompt of its own. Every fifth
/// problem's second sample was cut off by the teacher (`finish_reason` `length`), which both
/// engines drop.
fn record(p: usize, sample: i32) -> Record {
    let (a, b) = (5 + p % 20, 2 + p % 9);
    let prompt = format!("Problem {p}: Tom has {a} apples and buys {b} more. How many apples?");
    let reasoning = format!("{a} + {b} = {}", a + b);
    let completion = format!("\\boxed{{{}}}", a + b);
    let problem_id = format!("q{p}");
    Record {
        id: record::record_id(&problem_id, sample),
        problem_id,
        sample_index: sample,
        source: "test".into(),
        messages: record::conversation(&prompt, &reasoning, &completion),
        prompt,
        reasoning,
        completion,
        final_answer: Some((a + b).to_string()),
        reference_answer: Some((a + b).to_string()),
        correct: Some(true),
        finish_reason: if p.is_multiple_of(5) && sample == 1 {
            "length".into()
        } else {
            "stop".into()
        },
        prompt_tokens: 0,
        completion_tokens: 0,
        teacher: "test".into(),
        temperature: 0.6,
        top_p: 0.95,
        seed: sample as u64,
    }
}

fn write_corpus(dir: &Path, problems: usize, samples: i32) -> (PathBuf, Vec<Record>) {
    let out = dir.join("corpus");
    let records: Vec<Record> = (0..problems)
        .flat_map(|p| (0..samples).map(move |s| record(p, s)))
        .collect();
    let mut w = ShardWriter::create(&out, record::schema(), WriterOptions::default()).unwrap();
    w.write(&record::records_to_batch(&records).unwrap())
        .unwrap();
    w.finish().unwrap();
    (out, records)
}

/// A tiny base model with a tokenizer and distill's ChatML template.
fn tiny_base(dir: &Path, corpus: &Path) -> PathBuf {
    let out = dir.join("base");
    run_ok(
        bin()
            .args(["--threads", "1", "train", "--from-scratch", "--quiet"])
            .arg("--corpus")
            .arg(corpus)
            .arg("--out")
            .arg(&out)
            .args([
                "--vocab-size",
                "80",
                "--hidden-size",
                "32",
                "--layers",
                "1",
                "--heads",
                "2",
                "--kv-heads",
                "1",
                "--intermediate-size",
                "48",
                "--max-seq-len",
                "128",
                "--max-steps",
                "1",
            ]),
    );
    out.join("model")
}

fn user_prompts(path: &Path) -> Vec<String> {
    data::read_corpus(&[path.to_path_buf()])
        .unwrap()
        .into_iter()
        .map(|c| {
            assert_eq!(c.messages.len(), 2, "{c:?}");
            assert_eq!(c.messages[1].role, "assistant");
            assert!(c.messages[1].content.starts_with("<think>\n"), "{c:?}");
            c.messages[0].content.clone()
        })
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn dry_run_writes_the_job_distill_would_train() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, records) = write_corpus(dir.path(), 40, 3);
    let base = tiny_base(dir.path(), &corpus);

    // distill's own split and counts on the same corpus, base and data settings.
    let own = dir.path().join("own");
    run_ok(
        bin()
            .args(["--threads", "1", "train", "--quiet", "--no-packing"])
            .arg("--base")
            .arg(&base)
            .arg("--corpus")
            .arg(&corpus)
            .arg("--out")
            .arg(&own)
            .args([
                "--max-seq-len",
                "128",
                "--eval-fraction",
                "0.25",
                "--max-steps",
                "1",
            ]),
    );
    let own_report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(own.join("data_report.json")).unwrap())
            .unwrap();

    let job = dir.path().join("job");
    let out = run_ok(
        bin()
            .args(["--threads", "1", "train", "--engine", "trl", "--dry-run"])
            .arg("--base")
            .arg(&base)
            .arg("--corpus")
            .arg(&corpus)
            .arg("--out")
            .arg(&job)
            .args([
                "--max-seq-len",
                "128",
                "--no-packing",
                "--eval-fraction",
                "0.25",
                "--lr",
                "3e-5",
                "--epochs",
                "2",
                "--micro-batch-size",
                "2",
                "--accumulation-steps",
                "4",
                "--distributed",
                "zero3",
                "--nodes",
                "2",
                "--gpus-per-node",
                "4",
                "--quiet",
            ]),
    );
    let said = stderr(&out);
    assert!(
        said.contains("Memory per GPU (estimate; zero3 over 8 processes"),
        "{said}"
    );
    assert!(said.contains("Dry run: the TRL job is in"), "{said}");

    for file in [
        "recipe.yaml",
        "accelerate.yaml",
        "launch.sh",
        "slurm.sbatch",
        "distill_sft.py",
        "chat_template.jinja",
        "train_config.toml",
        "data_report.json",
        "data/train.parquet",
        "data/eval.parquet",
        "data/lengths.json",
    ] {
        assert!(job.join(file).is_file(), "no `{file}`");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(job.join("launch.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
    }

    // The same conversations as distill's trainer: the teacher-truncated samples dropped, every
    // sample of a held-out problem (and only those) in eval.parquet.
    let train = user_prompts(&job.join("data/train.parquet"));
    let eval = user_prompts(&job.join("data/eval.parquet"));
    let kept: Vec<&Record> = records
        .iter()
        .filter(|r| r.finish_reason != "length")
        .collect();
    assert_eq!(kept.len(), 112);
    let expected_eval: BTreeSet<&str> = kept
        .iter()
        .filter(|r| data::is_eval(&r.problem_id, 0.25))
        .map(|r| r.prompt.as_str())
        .collect();
    let eval_set: BTreeSet<&str> = eval.iter().map(String::as_str).collect();
    assert_eq!(eval_set, expected_eval);
    assert!(train.iter().all(|p| !eval_set.contains(p.as_str())));
    assert_eq!(train.len() + eval.len(), kept.len());
    assert_eq!(train.len() as u64, own_report["train_documents"]);
    assert_eq!(eval.len() as u64, own_report["eval_documents"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job.join("data_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["rows"], 120);
    assert_eq!(report["dropped"]["teacher_truncated"], 8);
    assert_eq!(report["train_documents"], own_report["train_documents"]);
    // Unpacked, distill's rows are the documents: the same tokens under the same template.
    assert_eq!(report["train_tokens"], own_report["train_tokens"]);

    // max_length: the longest training document rounded up to 64, within max_seq_len.
    let lengths: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job.join("data/lengths.json")).unwrap())
            .unwrap();
    let longest = lengths["train"]["max"].as_u64().unwrap();
    assert_eq!(
        lengths["train"]["documents"].as_u64().unwrap(),
        train.len() as u64
    );
    assert_eq!(lengths["train"]["tokens"], own_report["train_tokens"]);
    let max_length = longest.div_ceil(64) * 64;
    assert!(max_length <= 128 && longest > 0, "{lengths}");

    let recipe = std::fs::read_to_string(job.join("recipe.yaml")).unwrap();
    let base_abs = std::path::absolute(&base).unwrap();
    for line in [
        format!("model_name_or_path: {:?}", base_abs.display().to_string()),
        format!("max_length: {max_length}"),
        "packing: false".into(),
        "assistant_only_loss: true".into(),
        "chat_template_path: \"chat_template.jinja\"".into(),
        "dataset_name: \"data\"".into(),
        "learning_rate: 0.00003".into(),
        "num_train_epochs: 2.0".into(),
        "per_device_train_batch_size: 2".into(),
        "gradient_accumulation_steps: 4".into(),
        "# 8 processes × 2 × 4 = 64 sequences per optimizer step".into(),
        "bf16: true".into(),
        "output_dir: \"checkpoints\"".into(),
    ] {
        assert!(
            recipe.lines().any(|l| l == line),
            "no `{line}` in\n{recipe}"
        );
    }
    let accelerate = std::fs::read_to_string(job.join("accelerate.yaml")).unwrap();
    for line in [
        "distributed_type: \"DEEPSPEED\"",
        "  zero_stage: 3",
        "num_machines: 2",
        "num_processes: 8",
    ] {
        assert!(accelerate.lines().any(|l| l == line), "{accelerate}");
    }
    let slurm = std::fs::read_to_string(job.join("slurm.sbatch")).unwrap();
    assert!(slurm.contains("#SBATCH --nodes=2\n"), "{slurm}");
    assert!(slurm.contains("#SBATCH --gpus-per-node=4\n"), "{slurm}");
    let config = std::fs::read_to_string(job.join("train_config.toml")).unwrap();
    assert!(config.contains("engine = \"trl\""), "{config}");
    assert!(config.contains("[trl]"), "{config}");

    // A second dry run rewrites the folder, reusing the dataset (same corpus, tokenizer,
    // template and filters): its files are left as they were.
    let train_file = job.join("data/train.parquet");
    let written = std::fs::metadata(&train_file).unwrap().modified().unwrap();
    let again = run_ok(
        bin()
            .args(["train", "--config"])
            .arg(job.join("train_config.toml"))
            .args(["--dry-run", "--quiet"]),
    );
    assert!(
        stderr(&again).contains("Dataset (unchanged since the last export, reused): "),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::metadata(&train_file).unwrap().modified().unwrap(),
        written
    );
    assert_eq!(
        std::fs::read_to_string(job.join("recipe.yaml")).unwrap(),
        recipe
    );
    // Another filter is another dataset: exported again.
    let changed = run_ok(
        bin()
            .args(["train", "--config"])
            .arg(job.join("train_config.toml"))
            .args(["--dry-run", "--quiet", "--eval-fraction", "0.4"]),
    );
    assert!(
        stderr(&changed).starts_with("Dataset: "),
        "{}",
        stderr(&changed)
    );
    assert_ne!(
        std::fs::metadata(&train_file).unwrap().modified().unwrap(),
        written
    );
}

#[test]
fn bad_combinations_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), 4, 1);
    let out = dir.path().join("o");
    let cases: [(&[&str], &str); 8] = [
        (
            &["--base", "b", "--dry-run"],
            "`--dry-run` writes a TRL job",
        ),
        (
            &["--from-scratch", "--engine", "trl"],
            "the TRL engine fine-tunes a base model",
        ),
        (
            &["--base", "b", "--engine", "trl", "--offload", "optimizer"],
            "`trl.offload = \"optimizer\"` needs `trl.distributed`",
        ),
        (
            &["--base", "b", "--nodes", "2"],
            "the `[trl]` settings need `engine = \"trl\"`",
        ),
        (
            &["--base", "m.gguf", "--engine", "trl", "--dry-run"],
            "does not exist",
        ),
        // accelerate would quietly run these as data parallel on CPU processes.
        (
            &[
                "--base",
                "b",
                "--engine",
                "trl",
                "--device",
                "cpu",
                "--distributed=fsdp2",
            ],
            "`trl.distributed = \"fsdp2\"` needs GPUs",
        ),
        (
            &[
                "--base",
                "b",
                "--engine",
                "trl",
                "--device=cpu",
                "--distributed=zero3",
                "--dry-run",
            ],
            "`trl.distributed = \"zero3\"` needs GPUs",
        ),
        (
            &["--base", "b", "--engine", "trl", "--keep-layers", "0-3"],
            "`keep_layers` runs in distill's own trainer",
        ),
    ];
    for (args, expected) in cases {
        let output = bin()
            .arg("train")
            .arg("--corpus")
            .arg(&corpus)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let err = stderr(&output);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let gguf = dir.path().join("m.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let output = bin()
        .arg("train")
        .arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .args(["--engine", "trl", "--dry-run", "--base"])
        .arg(&gguf)
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(err.contains("distill convert"), "{err}");
    assert!(!out.exists());
}

/// A stand-in Python that answers the package probe with `versions` (a JSON object).
#[cfg(unix)]
fn fake_python(dir: &Path, versions: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python");
    std::fs::write(&path, format!("#!/bin/sh\necho '{versions}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Without `--dry-run` the Python side is checked before anything is read or written: the
/// first missing or mismatched package is named in one line with the command that fixes it.
#[cfg(unix)]
#[test]
fn the_python_side_is_checked_first() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), 4, 1);
    let out = dir.path().join("o");
    let pinned = r#""torch": "2.15.0+cu132", "transformers": "5.25.0", "trl": "1.16.0", "accelerate": "1.16.0", "datasets": "5.2.0", "peft": "0.21.2""#;
    let cases = [
        (
            format!(
                "{{{}}}",
                pinned
                    .replace("\"1.16.0\", \"accelerate", "\"1.15.0\", \"accelerate")
                    .replace("\"0.21.2\"", "null")
            ),
            &[][..],
            "`trl==1.16.0` is pinned, `1.15.0` is installed (and 1 more)",
        ),
        (
            format!("{{{pinned}}}"),
            &["--distributed", "zero3"][..],
            "`deepspeed==0.19.8` is not installed",
        ),
    ];
    for (versions, extra, expected) in cases {
        let python = fake_python(dir.path(), &versions);
        let output = bin()
            .env("DISTILL_TRL_PYTHON", &python)
            .args(["train", "--engine", "trl", "--base", "no-such-base"])
            .arg("--corpus")
            .arg(&corpus)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        let err = stderr(&output);
        assert!(!output.status.success());
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("bash engines/trl/setup.sh"), "{err}");
        assert!(err.contains(&python.display().to_string()), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    let output = bin()
        .env("DISTILL_TRL_PYTHON", dir.path().join("missing/python"))
        .args(["train", "--engine", "trl", "--base", "b"])
        .arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(
        err.contains("missing/python` does not exist: run `bash engines/trl/setup.sh`"),
        "{err}"
    );
}
