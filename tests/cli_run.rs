//! `distill run` end to end on a shrunken pipeline: every stage through the real binary,
//! manifests written, a teacher above chance on the problems it generates for, a student whose
//! loss fell training on the teacher's verified, filtered samples, both compared on problems
//! neither trained on, a rerun skips finished stages, a pipeline killed during `train` resumes without redoing `generate`, and bad
//! pipeline files fail before any work.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const STAGES: [&str; 9] = [
    "problems",
    "eval_problems",
    "teacher",
    "generate",
    "verify",
    "filter",
    "train",
    "opd",
    "compare",
];

/// The shrunken pipeline of the first test goes on to distil the student on-policy: the student
/// takes the teacher's tokenizer, and `[opd]` samples its own prompts for a few steps.
fn with_on_policy(text: &str, out: &Path) -> String {
    let tokenizer = out.join("teacher/model");
    text.replace(
        "[train]\n",
        &format!(
            "[train]\ntokenizer = {:?}\neval_fraction = 0.3\n",
            tokenizer.display().to_string()
        ),
    ) + r#"
[opd]
eval_fraction = 0.3
max_steps = 4
lr = 0.005
warmup_steps = 1
opd_prompts_per_step = 8
opd_max_new_tokens = 48
opd_prefill = ""
quiet = true
"#
}

/// A shrunken demo with the demo's wiring: the teacher memorises 16 easy problems and generates
/// for them (so its samples are mostly correct: "above chance" there tests that training took
/// and the stages are wired), the student trains only on the verified, filtered samples, and
/// `compare` scores both on 16 other problems (seed 2) that neither model trained on. Held-out
/// accuracy itself needs the full demo's budget; here it is only reported.
fn pipeline(out: &Path, student_steps: u32) -> String {
    format!(
        r#"
[pipeline]
name = "shrunken-demo"
out = "{out}"

[problems]
count = 16
seed = 1
difficulty = 0

[eval_problems]
count = 16
seed = 2
difficulty = 0

[teacher]
max_steps = 150
max_seq_len = 256
micro_batch_size = 4
lr = 0.01
warmup_steps = 10
hidden_size = 64
layers = 2
heads = 4
kv_heads = 2
intermediate_size = 128
vocab_size = 300
quiet = true

[generate]
samples = 2
max_new_tokens = 48
batch = 32

[verify]

# Rejection sampling: the student's corpus is what survives.
[filter]

[train]
max_steps = {student_steps}
checkpoint_every = 2
lr = 0.01
warmup_steps = 2
max_seq_len = 256
hidden_size = 16
layers = 1
heads = 2
kv_heads = 1
intermediate_size = 32
vocab_size = 300
quiet = true

[compare]
samples = 4
batch = 32
max_new_tokens = 48
"#,
        out = out.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn distill(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["--threads", "1"])
        .args(args)
        .output()
        .expect("run distill");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn manifest(out: &Path, stage: &str) -> serde_json::Value {
    let path = out.join("manifests").join(format!("{stage}.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn mtimes(dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
        .collect();
    out.sort();
    out
}

/// Share of the problems whose answer is the most common one: the pass@1 of a model that always
/// gives that answer.
fn most_common_answer_share(problems: &Path) -> f64 {
    let text = std::fs::read_to_string(problems).unwrap();
    let mut counts = std::collections::HashMap::new();
    let mut n = 0;
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts.entry(row["answer"].to_string()).or_insert(0usize) += 1;
        n += 1;
    }
    *counts.values().max().unwrap() as f64 / n as f64
}

/// The `prompt` of every problem in a problems file.
fn prompts(problems: &Path) -> std::collections::HashSet<String> {
    std::fs::read_to_string(problems)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].to_string())
        .collect()
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// The labels of the models a `report.json` compares, in order.
fn model_labels(report: &serde_json::Value) -> Vec<&str> {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["label"].as_str().unwrap())
        .collect()
}

/// The training loss of every step in a `metrics.jsonl`.
fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|m| m["loss"].as_f64())
        .collect()
}

const STUDENT_STEPS: u32 = 30;

#[test]
fn shrunken_pipeline_runs_skips_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let file = write(
        dir.path(),
        "demo.toml",
        &with_on_policy(&pipeline(&out, STUDENT_STEPS), &out),
    );
    let file = file.to_str().unwrap();

    let (ok, log) = distill(&["run", file]);
    assert!(ok, "{log}");
    for stage in STAGES {
        let m = manifest(&out, stage);
        assert_eq!(m["status"], "done", "{stage}");
        assert_eq!(m["config_hash"].as_str().unwrap().len(), 16);
    }
    assert_eq!(
        std::fs::read_to_string(out.join("problems/train.jsonl"))
            .unwrap()
            .lines()
            .count(),
        16
    );
    assert!(out.join("teacher/model/config.json").is_file());
    assert!(out.join("student/model/tokenizer.json").is_file());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/report.json")).unwrap())
            .unwrap();
    // Compared: the teacher, the SFT student and the student after on-policy distillation.
    let labels = model_labels(&report);
    assert_eq!(labels, ["teacher", "student", "student-opd"], "{report}");
    let opd_config = std::fs::read_to_string(out.join("student-opd/train_config.toml")).unwrap();
    for wired in ["student/model", "teacher/model", "corpus/filter"] {
        assert!(opd_config.contains(wired), "{wired}: {opd_config}");
    }
    let opd_metrics = std::fs::read_to_string(out.join("student-opd/metrics.jsonl")).unwrap();
    assert_eq!(
        opd_metrics.matches("\"eval_kd\"").count(),
        2,
        "{opd_metrics}"
    );
    // The teacher beats chance on the problems it generated for: its verified-correct share
    // against always giving the training set's most common answer.
    let chance = most_common_answer_share(&out.join("problems/train.jsonl"));
    let verified = json_file(&out.join("corpus/verify/summary.json"));
    let correct = verified["correct"].as_f64().unwrap() / verified["rows_in"].as_f64().unwrap();
    assert!(
        correct > chance + 0.05,
        "teacher's samples {correct} correct, not above chance {chance}: {verified}"
    );
    // The student's corpus is the teacher's curated samples: exactly the rows filter kept, all
    // of them verified correct; never the worked solutions.
    let kept = json_file(&out.join("corpus/filter/summary.json"))["rows_out"]
        .as_u64()
        .unwrap();
    assert!(kept > 0);
    let data = json_file(&out.join("student/data_report.json"));
    assert_eq!(data["rows"].as_u64(), Some(kept), "{data}");
    let train_config = std::fs::read_to_string(out.join("student/train_config.toml")).unwrap();
    let corpus = format!(
        "corpus = {:?}",
        out.join("corpus/filter").display().to_string()
    );
    assert!(train_config.contains(&corpus), "{train_config}");
    // Both models are scored on the held-out problems, none of which any model trained on.
    let eval_prompts = prompts(&out.join("problems/eval.jsonl"));
    let train_prompts = prompts(&out.join("problems/train.jsonl"));
    assert_eq!(eval_prompts.len(), 16);
    assert!(eval_prompts.is_disjoint(&train_prompts));
    for model in report["models"].as_array().unwrap() {
        assert_eq!(model["problems"], 16, "{report}");
        assert!(model["pass_at_1"].as_f64().is_some(), "{report}");
    }
    assert_eq!(report["models"][0]["role"], "teacher", "{report}");
    assert_eq!(
        report["problems"]["path"],
        out.join("problems/eval.jsonl").display().to_string(),
        "{report}"
    );
    // The student trained: its loss fell.
    let losses = losses(&out.join("student/metrics.jsonl"));
    assert_eq!(losses.len(), STUDENT_STEPS as usize);
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.8 * first,
        "student loss went from {first} to {last}"
    );
    assert!(out.join("pipeline.toml").is_file() && out.join("pipeline.resolved.json").is_file());

    // Nothing changed: every stage is skipped.
    let (ok, log) = distill(&["run", file]);
    assert!(ok, "{log}");
    assert_eq!(
        log.matches("done already, skipped").count(),
        STAGES.len(),
        "{log}"
    );

    // --only reruns exactly one stage.
    let before = mtimes(&out.join("corpus/generated"));
    let (ok, log) = distill(&["run", file, "--only", "verify"]);
    assert!(ok, "{log}");
    assert_eq!(log.matches(": running").count(), 1, "{log}");
    assert!(log.contains("verify: running"), "{log}");
    assert_eq!(mtimes(&out.join("corpus/generated")), before);
}

#[test]
fn killed_during_train_resumes_without_redoing_generate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let file = write(dir.path(), "demo.toml", &pipeline(&out, 400));
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["--threads", "1", "run", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the student has written a checkpoint.
    let deadline = Instant::now() + Duration::from_secs(300);
    let checkpoints = out.join("student/checkpoints");
    loop {
        let has_checkpoint = std::fs::read_dir(&checkpoints)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
            })
            .unwrap_or(false);
        if has_checkpoint {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "pipeline ended before training checkpointed"
        );
        assert!(Instant::now() < deadline, "no checkpoint in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(manifest(&out, "train")["status"], "running");
    assert_eq!(manifest(&out, "generate")["status"], "done");
    let generated = mtimes(&out.join("corpus/generated"));

    // Rerun with a short schedule would be a different config; rerun the same one.
    let (ok, log) = distill(&["run", file.to_str().unwrap()]);
    assert!(ok, "{log}");
    assert!(log.contains("generate: done already, skipped"), "{log}");
    assert!(log.contains("train: resuming"), "{log}");
    assert_eq!(mtimes(&out.join("corpus/generated")), generated);
    assert_eq!(manifest(&out, "train")["status"], "done");
    assert_eq!(manifest(&out, "compare")["status"], "done");
}

#[test]
fn bad_pipelines_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let text = pipeline(&out, 4);

    let typo = write(
        dir.path(),
        "typo.toml",
        &text.replace("max_new_tokens = 48\nbatch", "max_new_tokenz = 48\nbatch"),
    );
    let (ok, log) = distill(&["run", typo.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        log.contains("unknown key `max_new_tokenz` in table `[generate]`")
            && log.contains("did you mean `max_new_tokens`?"),
        "{log}"
    );

    let table = write(
        dir.path(),
        "table.toml",
        &format!("{text}\n[trian]\nlr = 1.0\n"),
    );
    let (ok, log) = distill(&["run", table.to_str().unwrap()]);
    assert!(!ok);
    assert!(log.contains("unknown table `[trian]`"), "{log}");

    let value = write(
        dir.path(),
        "value.toml",
        &text.replace(
            "samples = 2\nmax_new_tokens = 48\nbatch",
            "samples = \"many\"\nmax_new_tokens = 48\nbatch",
        ),
    );
    let (ok, log) = distill(&["run", value.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        log.contains("in table `[generate]`") && log.contains("many"),
        "{log}"
    );

    // A stage whose input another stage produces, run alone: name the producer.
    let good = write(dir.path(), "good.toml", &text);
    let (ok, log) = distill(&["run", good.to_str().unwrap(), "--only", "generate"]);
    assert!(!ok);
    assert!(
        log.contains("stage `generate` needs") && log.contains("stage `problems` produces"),
        "{log}"
    );
    assert!(!out.join("manifests").exists(), "no work may start");

    let missing = write(
        dir.path(),
        "missing.toml",
        &text.replace(
            "[generate]\n",
            "[generate]\nmodel = \"/no/such/model.gguf\"\n",
        ),
    );
    let (ok, log) = distill(&["run", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        log.contains("stage `generate` needs `/no/such/model.gguf`, which does not exist"),
        "{log}"
    );
    assert!(!out.join("manifests").exists(), "no work may start");
}

/// Every preset in `pipelines/` parses, every key is a real flag of its stage, and it resolves
/// to the stages its header promises.
#[test]
fn every_preset_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut presets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    presets.sort();
    let names: Vec<String> = presets
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "demo-laptop.toml",
            "demo-opd.toml",
            "demo.toml",
            "gsm8k-smollm2.toml",
            "local-teacher.toml",
            "qwen-gsm8k-opd.toml",
            "r1-distill-qwen-1.5b.toml"
        ]
    );
    for preset in &presets {
        let (ok, log) = distill(&["run", preset.to_str().unwrap(), "--dry-run"]);
        assert!(ok, "{}: {log}", preset.display());
        let header = std::fs::read_to_string(preset).unwrap();
        assert!(header.starts_with(&format!(
            "# {}",
            preset.file_name().unwrap().to_string_lossy()
        )));
        assert!(header.contains("Run") && header.contains("cargo run --release -- run pipelines/"));
        for stage in ["generate", "verify", "train", "compare"] {
            assert!(
                log.contains(&format!("{stage:>14}  distill ")),
                "{}: no {stage}\n{log}",
                preset.display()
            );
        }
        // The demo with on-policy distillation distils the SFT student from the teacher.
        if preset.ends_with("demo-opd.toml") {
            assert!(
                log.contains("           opd  distill train --base runs/demo-opd/student/model")
                    && log.contains("--kd-teacher runs/demo-opd/teacher/model")
                    && log.contains("--method opd"),
                "{log}"
            );
        }
        // The real-teacher recipe: a student cut from the teacher, then distilled from it.
        if preset.ends_with("qwen-gsm8k-opd.toml") {
            assert!(
                log.contains("--keep-layers 0-9,22-23")
                    && log.contains(
                        "--kd-teacher runs/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --kd-top-k 64"
                    )
                    && log.contains("--method opd"),
                "{log}"
            );
        }
        // The laptop demo compares the exported student, so the export runs first.
        if preset.ends_with("demo-laptop.toml") {
            let export = log
                .find("        export  distill export")
                .expect("an export stage");
            let compare = log.find("       compare  distill compare").unwrap();
            assert!(
                export < compare
                    && log.contains(
                        "--labels student.q8_0=runs/demo-laptop/export/student.q8_0.gguf"
                    )
                    && log.contains("--pre-tokenizer smollm"),
                "{log}"
            );
        }
        // The SmolLM2 student is exported for llama.cpp: the stage takes the trained model.
        if preset.ends_with("gsm8k-smollm2.toml") {
            assert!(
                log.contains(
                    "        export  distill export --gguf runs/gsm8k-smollm2/export/student.q4_k_m.gguf \
                     --quant q4_k_m -- runs/gsm8k-smollm2/student/model\n"
                ),
                "{log}"
            );
        }
    }
}

/// Ctrl-C during `generate` stops the whole pipeline (the next stage must not start on a partial
/// corpus) and leaves `generate` to be resumed by the next run.
#[test]
fn ctrl_c_stops_the_pipeline_and_the_stage_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // An untrained teacher, so every sample runs to the token limit and generate is still
    // running when the first shard lands.
    let text = pipeline(&out, 4)
        .replace("max_steps = 150", "max_steps = 4")
        .replace(
            "samples = 2\nmax_new_tokens = 48\nbatch = 32",
            "samples = 8\nmax_new_tokens = 48\nbatch = 2\nshard_rows = 8",
        );
    let text = &text[..text.find("[train]").unwrap()];
    let file = write(dir.path(), "demo.toml", text);
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["--threads", "1", "run", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !out.join("corpus/generated/manifest.json").is_file() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "pipeline ended before generate wrote a shard"
        );
        assert!(Instant::now() < deadline, "no shard in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{log}");
    assert_eq!(manifest(&out, "generate")["status"], "running", "{log}");
    assert!(
        !out.join("manifests/verify.json").exists(),
        "verify must not start: {log}"
    );

    let (ok, log) = distill(&["run", file.to_str().unwrap()]);
    assert!(ok, "{log}");
    assert!(log.contains("generate: resuming"), "{log}");
    assert!(log.contains("verify: 128 rows in"), "{log}");
}

/// An `[export]` stage runs before `compare`, and `compare` then scores the exported file beside
/// the models it came from: the report gains its laptop table. The student's tokenizer uses
/// llama.cpp's `smollm` pre-tokenizer, so the from-scratch student exports.
#[test]
fn the_exported_student_is_compared() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let text = pipeline(&out, 4).replace("[train]\n", "[train]\npre_tokenizer = \"smollm\"\n")
        + "\n[export]\nquant = \"q8_0\"\n";
    let file = write(dir.path(), "laptop.toml", &text);
    let (ok, log) = distill(&["run", file.to_str().unwrap()]);
    assert!(ok, "{log}");
    let gguf = out.join("export/student.q8_0.gguf");
    assert!(gguf.is_file(), "{log}");
    let report = json_file(&out.join("report/report.json"));
    let labels = model_labels(&report);
    assert_eq!(labels, ["teacher", "student", "student.q8_0"], "{report}");
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("On a laptop") && md.contains("Q8_0"), "{md}");
    // The export ran first: its manifest is older than the report's.
    let done = |stage: &str| {
        std::fs::metadata(out.join("manifests").join(format!("{stage}.json")))
            .unwrap()
            .modified()
            .unwrap()
    };
    assert!(done("export") <= done("compare"));
}

/// A pipeline that starts from a corpus made by others: `[import]` (an OpenR1-Math file as
/// `datasets` writes it) feeds verify, filter and the student's training.
#[test]
fn a_pipeline_starts_from_an_imported_corpus() {
    let dir = tempfile::tempdir().unwrap();
    // A relative output folder not made yet: `runs-rel/corpus/…` is shaped like a hub dataset
    // name (`runs-rel/corpus`), and must stay the path the earlier stages write (offline, so
    // any attempt to fetch it would fail the run).
    let out = dir.path().join("runs-rel");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let openr1 = root.join("corpus/tests/fixtures/import/openr1-math.parquet");
    let base = root.join("models/tests/fixtures/tiny-llama.gguf");
    let text = format!(
        r#"[pipeline]
out = "runs-rel"

[import]
inputs = ["{openr1}"]
layout = "columns"

[verify]

[filter]

[train]
base = "{base}"
max_steps = 2
max_seq_len = 128
eval_fraction = 0.0
quiet = true
"#,
        openr1 = openr1.display(),
        base = base.display()
    );
    let file = write(dir.path(), "imported.toml", &text);
    let run_in_dir = |file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_distill"))
            .current_dir(dir.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", dir.path().join("hf"))
            .args(["--threads", "1", "run"])
            .arg(file)
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, log) = run_in_dir(&file);
    assert!(ok, "{log}");
    assert!(
        log.contains("import: 3 rows from 1 file, 5 samples"),
        "{log}"
    );
    assert!(
        log.contains("filter: 5 rows in, 3 kept, 2 dropped"),
        "{log}"
    );
    // Tokens counted with `[train]`'s base, without a `tokenizer` key.
    assert!(!log.contains("token counts: not counted"), "{log}");
    assert_eq!(manifest(&out, "import")["status"], "done");
    let report = json_file(&out.join("student/data_report.json"));
    assert_eq!(report["rows"], 3, "{report}");
    // A rerun finds every stage done.
    let (ok, log) = run_in_dir(&file);
    assert!(ok && !log.contains("import: 3 rows"), "{log}");
    // One corpus per pipeline: `[import]` beside `[generate]` is refused before any work.
    let both = write(
        dir.path(),
        "both.toml",
        &text.replace("[verify]", "[generate]\nmodel = \"t.gguf\"\n\n[verify]"),
    );
    let (ok, log) = run_in_dir(&both);
    assert!(
        !ok && log.contains("has both `[generate]` and `[import]`"),
        "{log}"
    );
}
