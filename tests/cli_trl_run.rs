//! `distill train --engine trl` for real: a tiny random Llama-style student (trained from
//! scratch by distill for one step, so it has distill's tokenizer and template) fine-tuned by
//! TRL under `accelerate launch` with 2 CPU processes (gloo) on the worked-solutions corpus of
//! `distill problems`. The loss falls, metrics and evaluations reach `metrics.jsonl`, the model
//! comes back and `inspect` and `compare` take it; Ctrl-C checkpoints and stops the job and
//! `--resume` continues from TRL's checkpoint.
//!
//! It needs the TRL venv (`bash engines/trl/setup.sh`, which `.ci/run` runs, or
//! `DISTILL_TRL_PYTHON`); without one it is skipped with a loud note, except in CI, where it
//! fails (see `common::assets`).

mod common;
use common::{assets, run_ok};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distill"))
}

/// The Python with TRL, or `None` (and a loud note) when there is none here; in CI a missing
/// venv fails the test.
fn trl_python() -> Option<PathBuf> {
    let python = match std::env::var_os("DISTILL_TRL_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/distill-trl-venv/bin/python"),
    };
    assets::present_or(
        &python,
        "the TRL venv: run `bash engines/trl/setup.sh` or set DISTILL_TRL_PYTHON",
    )
    .then_some(python)
}

/// Problems, their worked-solutions corpus, and a tiny base model trained on it for one step.
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    setup_with(dir, 200)
}

/// [`setup`] with `count` problems.
fn setup_with(dir: &Path, count: usize) -> (PathBuf, PathBuf, PathBuf) {
    let problems = dir.join("problems.jsonl");
    let corpus = dir.join("solutions");
    run_ok(
        bin()
            .args([
                "problems",
                "--count",
                &count.to_string(),
                "--seed",
                "3",
                "--out",
            ])
            .arg(&problems)
            .arg("--solutions-corpus")
            .arg(&corpus),
    );
    let base = dir.join("base");
    run_ok(
        bin()
            .args(["--threads", "1", "train", "--from-scratch", "--quiet"])
            .arg("--corpus")
            .arg(&corpus)
            .arg("--out")
            .arg(&base)
            .args([
                "--vocab-size",
                "300",
                "--merge-across-words",
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
                "512",
                "--max-steps",
                "1",
            ]),
    );
    (problems, corpus, base.join("model"))
}

/// `distill train --engine trl` on 2 CPU processes with the test's Python.
fn trl_train(python: &Path, base: &Path, corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.env("DISTILL_TRL_PYTHON", python).args([
        "train",
        "--engine",
        "trl",
        "--device",
        "cpu",
        "--gpus-per-node",
        "2",
    ]);
    common_train(&mut cmd, base, corpus, out, extra);
    cmd
}

/// `distill train` (distill's own trainer) with the settings [`trl_train`] gives TRL.
fn own_train(base: &Path, corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args(["--threads", "1", "train"]);
    common_train(&mut cmd, base, corpus, out, extra);
    cmd
}

/// The settings both engines train with; `extra` may set its own `--micro-batch-size`.
fn common_train(cmd: &mut Command, base: &Path, corpus: &Path, out: &Path, extra: &[&str]) {
    if !extra.contains(&"--micro-batch-size") {
        cmd.args(["--micro-batch-size", "2"]);
    }
    cmd.args([
        "--quiet",
        "--max-seq-len",
        "512",
        "--lr",
        "1e-3",
        "--seed",
        "1",
    ])
    .arg("--base")
    .arg(base)
    .arg("--corpus")
    .arg(corpus)
    .arg("--out")
    .arg(out)
    .args(extra);
}

/// `metrics.jsonl`'s training steps (with their losses) and evaluation steps. A line being
/// written while a running job is watched may be incomplete: it is left for the next look.
fn metrics(out: &Path) -> (Vec<(u64, f64)>, Vec<u64>) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    let (mut steps, mut evals) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_u64().unwrap();
        match (v["loss"].as_f64(), v["eval_loss"].as_f64()) {
            (Some(loss), _) => steps.push((step, loss)),
            (None, Some(_)) => evals.push(step),
            _ => panic!("unexpected line {line}"),
        }
    }
    (steps, evals)
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn trl_trains_and_the_model_comes_back() {
    let Some(python) = trl_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (problems, corpus, base) = setup(dir.path());
    let out = dir.path().join("student");
    let done = run_ok(&mut trl_train(
        &python,
        &base,
        &corpus,
        &out,
        &[
            "--max-steps",
            "30",
            "--eval-every",
            "10",
            "--checkpoint-every",
            "10",
        ],
    ));
    let text = said(&done);
    assert!(text.contains("Trained 30 steps with TRL"), "{text}");

    let (steps, evals) = metrics(&out);
    let numbers: Vec<u64> = steps.iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (1..=30).collect::<Vec<u64>>());
    assert_eq!(evals, vec![10, 20, 30]);
    let mean = |xs: &[(u64, f64)]| xs.iter().map(|(_, l)| l).sum::<f64>() / xs.len() as f64;
    let (first, last) = (mean(&steps[..5]), mean(&steps[25..]));
    assert!(
        last < first - 0.3,
        "the loss did not fall: {first} → {last}"
    );
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    // The model comes back as a distill student does: it opens, stops at `<|im_end|>`, and
    // `compare` evaluates it.
    let model = out.join("model");
    let inspect = run_ok(bin().arg("inspect").arg(&model).arg("--json"));
    let r: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["chat_template"], true);
    let eos: Vec<&str> = r["eos_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["text"].as_str())
        .collect();
    assert!(eos.contains(&"<|im_end|>"), "{eos:?}");
    // It keeps distill's `chatml` for inference, not the training variant TRL was given.
    let template = std::fs::read_to_string(model.join("chat_template.jinja")).unwrap();
    assert!(!template.contains("endgeneration"), "{template}");
    assert!(template.contains("<|im_start|>"), "{template}");
    let report = dir.path().join("report");
    run_ok(
        bin()
            .args(["--threads", "1", "compare", "--models"])
            .arg(&model)
            .arg("--problems")
            .arg(&problems)
            .args([
                "--limit",
                "4",
                "--samples",
                "1",
                "--max-new-tokens",
                "16",
                "--out",
            ])
            .arg(&report),
    );
    assert!(report.join("report.json").is_file());
}

#[test]
fn ctrl_c_checkpoints_and_resume_continues() {
    let Some(python) = trl_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, corpus, base) = setup(dir.path());
    let out = dir.path().join("student");
    let args = ["--max-steps", "100000", "--checkpoint-every", "100000"];
    let child = trl_train(&python, &base, &corpus, &out, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once a few steps are logged, Ctrl-C (SIGINT to distill alone).
    let mut waited = 0;
    while metrics(&out).0.len() < 3 {
        std::thread::sleep(Duration::from_millis(200));
        waited += 1;
        assert!(waited < 3000, "no steps logged in 10 minutes");
    }
    // SAFETY: kill(2) on the child's pid sends a signal; no memory is touched.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let stopped = child.wait_with_output().unwrap();
    let text = said(&stopped);
    // TRL's own output goes with a failure: the temporary folder holding it is gone after.
    let log = std::fs::read_to_string(out.join("trl.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    assert!(
        stopped.status.success(),
        "{text}\n--- trl.log (last 60 lines) ---\n{}",
        tail.join("\n")
    );
    let step: u64 = text
        .split("Stopped at step ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop step in {text}"));
    assert!(out.join(format!("checkpoints/checkpoint-{step}")).is_dir());
    assert!(!out.join("model").exists());
    assert!(!out.join("distill-stop").exists());
    assert_eq!(metrics(&out).0.last().unwrap().0, step);

    // Without --resume the checkpoint is not overwritten; with it, training continues.
    let refused = trl_train(&python, &base, &corpus, &out, &args)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(said(&refused).contains("--resume"), "{}", said(&refused));
    let end = (step + 3).to_string();
    let resumed = run_ok(&mut trl_train(
        &python,
        &base,
        &corpus,
        &out,
        &[
            "--max-steps",
            &end,
            "--checkpoint-every",
            "100000",
            "--resume",
        ],
    ));
    // The corpus is unchanged: the dataset TRL resumes on is the one it started on.
    let text = said(&resumed);
    assert!(
        text.contains("Dataset (unchanged since the last export, reused)"),
        "{text}"
    );
    let numbers: Vec<u64> = metrics(&out).0.iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (1..=step + 3).collect::<Vec<u64>>());
    assert!(out.join("model/model.safetensors").is_file());
}

/// A pipeline whose `[train]` says `engine = "trl"`: the student stage runs through TRL on 2 CPU
/// processes from the model the pipeline's teacher stage made, and the `compare` stage takes
/// the folder TRL wrote like a distill student.
#[test]
fn a_pipeline_trains_its_student_through_trl() {
    let Some(python) = trl_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let file = dir.path().join("trl.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[pipeline]
out = "{out}"

[problems]
count = 200
seed = 3

[teacher]
max_steps = 1
max_seq_len = 512
vocab_size = 300
merge_across_words = true
hidden_size = 32
layers = 1
heads = 2
kv_heads = 1
intermediate_size = 48
quiet = true

[train]
engine = "trl"
base = "{out}/teacher/model"
corpus = "{out}/problems/solutions"
device = "cpu"
gpus_per_node = 2
micro_batch_size = 2
max_seq_len = 512
max_steps = 8
lr = 0.001
quiet = true

[compare]
limit = 4
samples = 1
max_new_tokens = 16
"#,
            out = out.display()
        ),
    )
    .unwrap();
    let run = run_ok(
        bin()
            .env("DISTILL_TRL_PYTHON", &python)
            .args(["--threads", "1", "run"])
            .arg(&file),
    );
    let text = said(&run);
    assert!(text.contains("Trained 8 steps with TRL"), "{text}");
    let numbers: Vec<u64> = metrics(&out.join("student"))
        .0
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<u64>>());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/report.json")).unwrap())
            .unwrap();
    let text = report.to_string();
    assert!(text.contains("student/model"), "{text}");
}

/// Both engines train the same thing: for every training document TRL prepares from the job
/// (its data preparation run by `engines/trl/dump_tokens.py` on the recipe, without training),
/// the tokens equal the document distill's trainer builds from the same corpus row with the
/// same tokenizer and template, and the labels cover exactly distill's trained span: the last
/// assistant turn after the prompt, through its end-of-turn token.
#[test]
fn trl_tokens_and_labels_are_distills() {
    use distill_models::Checkpoint;
    use distill_student::data::{self, DataConfig, Renderer};

    let Some(python) = trl_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_, corpus, base) = setup(dir.path());
    let job = dir.path().join("job");
    run_ok(&mut trl_train(
        &python,
        &base,
        &corpus,
        &job,
        &["--no-packing", "--eval-fraction", "0.1", "--dry-run"],
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/trl/dump_tokens.py");
    let dumped = run_ok(Command::new(&python).arg(&script).arg(&job));
    let trl: Vec<(Vec<u32>, Vec<i64>)> = String::from_utf8_lossy(&dumped.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let labels = v["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            (ids, labels)
        })
        .collect();

    let ckpt = Checkpoint::open(&base).unwrap();
    let tokenizer = ckpt.tokenizer().unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let renderer = Renderer::new(tokenizer, template, &ckpt.eos_token_ids()).unwrap();
    let config = DataConfig {
        max_seq_len: 512,
        packing: false,
        eval_fraction: 0.1,
        ..Default::default()
    };
    let conversations = data::read_corpus(&[corpus]).unwrap();
    let outcomes = data::prepare(&conversations, &renderer, &config);
    let distill: Vec<(Vec<u32>, usize)> = conversations
        .iter()
        .zip(outcomes)
        .filter(|(c, _)| !data::is_eval(c.problem_key(), 0.1))
        .filter_map(|(_, o)| o.ok())
        .map(|d| (d.input_ids, d.boundary))
        .collect();
    assert!(distill.len() > 150, "{}", distill.len());
    assert_eq!(trl.len(), distill.len());
    let end_of_turn = renderer.end_of_turn_id().unwrap();
    for (i, ((trl_ids, labels), (ids, boundary))) in trl.iter().zip(&distill).enumerate() {
        assert_eq!(trl_ids, ids, "document {i}: tokens");
        let expected: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(j, &t)| if j >= *boundary { i64::from(t) } else { -100 })
            .collect();
        assert_eq!(labels, &expected, "document {i}: labels");
        assert_eq!(
            *ids.last().unwrap(),
            end_of_turn,
            "document {i} ends its turn"
        );
    }
}

/// One line of `metrics.jsonl`: the first with `key`.
fn first_with(out: &Path, key: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|v| v.get(key).is_some())
        .unwrap_or_else(|| panic!("no `{key}` in {text}"))
}

/// Both engines take the same first step. From the same tiny student (f32), each trains one
/// step on one batch holding the whole training set: distill's trainer on one process, TRL
/// under the generated recipe on 2 (half the rows each, so the loss is TRL's token mean across
/// processes). The loss before the update, the gradient norm and the held-out loss after it
/// agree within 1e-4 (measured: 5e-7), packed (TRL's `bfd` rows, checked to be distill's rows
/// token for token, boundaries and labels included; with weight decay) and unpacked (one
/// padded document per row).
#[test]
fn trl_first_step_is_distills() {
    use distill_models::Checkpoint;
    use distill_student::batch::IGNORE;
    use distill_student::data::{self, DataConfig, Renderer};

    let Some(python) = trl_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 33 problems: 32 training documents in 14 packed rows, 1 held out; both even, so the 2
    // processes get equal halves of the one batch.
    let (_, corpus, base) = setup_with(dir.path(), 33);
    let ckpt = Checkpoint::open(&base).unwrap();
    let tokenizer = ckpt.tokenizer().unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let renderer = Renderer::new(tokenizer, template, &ckpt.eos_token_ids()).unwrap();
    let conversations = data::read_corpus(std::slice::from_ref(&corpus)).unwrap();

    for packing in [true, false] {
        let config = DataConfig {
            max_seq_len: 512,
            packing,
            ..Default::default()
        };
        let dataset = data::build(&conversations, &renderer, &config).unwrap();
        let rows = dataset.train.len();
        let tokens: usize = dataset.train.iter().map(|r| r.len()).sum();
        assert_eq!(
            (rows, dataset.report.train_documents, dataset.eval.len()),
            (if packing { 14 } else { 32 }, 32, 1)
        );
        let name = if packing { "packed" } else { "unpacked" };
        let mut extra = vec!["--max-steps", "1"];
        // Packed, with strong weight decay: both engines decay the same weights (not the
        // embedding table), or the held-out losses after the step part.
        let decay = dir.path().join("decay.toml");
        std::fs::write(&decay, "[train.optim]\nweight_decay = 200.0\n").unwrap();
        if packing {
            extra.extend(["--config", decay.to_str().unwrap()]);
        } else {
            extra.push("--no-packing");
        }
        let (all, half) = (rows.to_string(), (rows / 2).to_string());
        let own = dir.path().join(format!("own-{name}"));
        let mut own_args = extra.clone();
        own_args.extend(["--micro-batch-size", &all]);
        run_ok(&mut own_train(&base, &corpus, &own, &own_args));
        let trl = dir.path().join(format!("trl-{name}"));
        let mut trl_args = extra.clone();
        trl_args.extend(["--micro-batch-size", &half]);
        run_ok(&mut trl_train(&python, &base, &corpus, &trl, &trl_args));

        let (a, b) = (first_with(&own, "loss"), first_with(&trl, "loss"));
        eprintln!("{name}: distill {a}\n{name}: TRL {b}");
        assert_eq!(b["engine"], "trl");
        // Each engine saw every training token once in its step.
        assert_eq!(a["tokens"].as_u64(), Some(tokens as u64), "{a}");
        assert_eq!(b["tokens"].as_u64(), Some(tokens as u64), "{b}");
        for key in ["loss", "grad_norm"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{name} {key}: distill {x}, TRL {y}");
        }
        let (x, y) = (
            first_with(&own, "eval_loss")["eval_loss"].as_f64().unwrap(),
            first_with(&trl, "eval_loss")["eval_loss"].as_f64().unwrap(),
        );
        eprintln!("{name}: held-out loss after the step: distill {x}, TRL {y}");
        assert!(
            (x - y).abs() < 1e-4,
            "{name} eval_loss: distill {x}, TRL {y}"
        );

        if !packing {
            continue;
        }
        // TRL's packed rows are distill's, in the same order: the same documents end to end
        // (positions restarting at each), the same labels (TRL's unshifted, distill's shifted
        // by one within a document).
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/trl/dump_tokens.py");
        let dumped = run_ok(Command::new(&python).arg(&script).arg(&trl));
        let dumped: Vec<serde_json::Value> = String::from_utf8_lossy(&dumped.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(dumped.len(), rows);
        let numbers = |v: &serde_json::Value| -> Vec<i64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        };
        for (i, (theirs, ours)) in dumped.iter().zip(&dataset.train).enumerate() {
            let ids: Vec<i64> = ours.input_ids.iter().map(|&t| i64::from(t)).collect();
            assert_eq!(numbers(&theirs["input_ids"]), ids, "row {i}: tokens");
            let mut positions = Vec::new();
            for len in numbers(&theirs["seq_lengths"]) {
                positions.extend(0..len as u32);
            }
            assert_eq!(positions, ours.position_ids, "row {i}: document boundaries");
            let labels: Vec<i64> = (0..ours.len())
                .map(|j| match ours.position_ids[j] {
                    0 => IGNORE,
                    _ => ours.labels[j - 1],
                })
                .collect();
            assert_eq!(numbers(&theirs["labels"]), labels, "row {i}: labels");
        }
    }
}
