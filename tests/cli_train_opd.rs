//! `distill train --method opd` end to end on a tiny task: a from-scratch teacher learns the
//! synthetic word problems' worked solutions, a smaller student with the teacher's tokenizer
//! gets a few SFT steps, and on-policy distillation then lowers the student-teacher reverse KL
//! on held-out prompts while the student keeps ending its turns; a run resumed from its middle
//! checkpoint samples and trains exactly as the uninterrupted one; wrong set-ups fail in one
//! line before any work.

mod common;
use common::run_ok;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distill"));
    cmd.args(["--threads", "1"]);
    cmd
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cmd` fails with one error line holding `needle`.
fn refused(cmd: &mut Command, needle: &str) {
    let err = run_err(cmd);
    assert!(err.contains(needle), "{needle}: {err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
}

/// A from-scratch model trained on `corpus`.
fn scratch(corpus: &Path, out: &Path, size: [&str; 3], steps: &str, extra: &[&str]) {
    let mut cmd = bin();
    cmd.args(["train", "--quiet", "--from-scratch", "--max-seq-len", "256"]);
    cmd.args([
        "--hidden-size",
        size[0],
        "--layers",
        size[1],
        "--heads",
        "4",
    ]);
    cmd.args(["--kv-heads", "2", "--intermediate-size", size[2]]);
    cmd.args([
        "--micro-batch-size",
        "8",
        "--lr",
        "0.005",
        "--warmup-steps",
        "10",
    ]);
    cmd.args(["--max-steps", steps, "--eval-fraction", "0.1"]);
    cmd.arg("--corpus")
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .args(extra);
    run_ok(&mut cmd);
}

fn opd(corpus: &Path, base: &Path, teacher: &Path, out: &Path) -> Command {
    let teacher = teacher.join("model");
    opd_with(corpus, base, teacher.as_os_str(), out, ["0.005", "60"])
}

/// [`opd`] from the teacher `--kd-teacher TEACHER` (a checkpoint or a URL), at another
/// learning rate (`lr_steps[0]`) and number of steps (`lr_steps[1]`).
fn opd_with(
    corpus: &Path,
    base: &Path,
    teacher: &OsStr,
    out: &Path,
    lr_steps: [&str; 2],
) -> Command {
    let mut cmd = bin();
    cmd.args([
        "train",
        "--quiet",
        "--method",
        "opd",
        "--max-seq-len",
        "256",
    ]);
    cmd.args(["--micro-batch-size", "8", "--warmup-steps", "5"]);
    cmd.args(["--lr", lr_steps[0], "--max-steps", lr_steps[1]]);
    cmd.args(["--eval-every", "30", "--checkpoint-every", "30"]);
    cmd.args(["--eval-fraction", "0.1", "--opd-prompts-per-step", "16"]);
    cmd.args(["--opd-max-new-tokens", "48", "--opd-prefill", ""]);
    cmd.arg("--base").arg(base.join("model"));
    cmd.arg("--kd-teacher").arg(teacher);
    cmd.arg("--corpus").arg(corpus).arg("--out").arg(out);
    cmd
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The synthetic task's corpus in `d`, a from-scratch teacher trained on it and a student
/// with the teacher's tokenizer after a few SFT steps: `(corpus, teacher, sft)`.
fn task(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let corpus: PathBuf = d.join("solutions");
    let mut cmd = bin();
    cmd.args([
        "problems",
        "--count",
        "600",
        "--seed",
        "3",
        "--difficulty",
        "0",
    ]);
    cmd.arg("--out").arg(d.join("problems.jsonl"));
    cmd.arg("--solutions-corpus").arg(&corpus);
    run_ok(&mut cmd);
    let (teacher, sft) = (d.join("teacher"), d.join("sft"));
    scratch(
        &corpus,
        &teacher,
        ["64", "2", "192"],
        "200",
        &["--vocab-size", "256", "--merge-across-words"],
    );
    let tokenizer = teacher.join("model");
    let tokenizer = ["--tokenizer", tokenizer.to_str().unwrap()];
    scratch(&corpus, &sft, ["32", "1", "96"], "60", &tokenizer);
    (corpus, teacher, sft)
}

#[test]
fn on_policy_distillation_lowers_the_reverse_kl_and_still_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (corpus, teacher, sft) = task(d);

    let out = d.join("opd");
    let said = run_ok(&mut opd(&corpus, &sft, &teacher, &out));
    let said = String::from_utf8_lossy(&said.stderr);
    assert!(
        said.contains("Distilling on-policy from") && said.contains("held out"),
        "{said}"
    );
    assert!(
        !said.contains("held-out pass rate covers"),
        "60 held out: {said}"
    );
    let lines = metrics(&out);
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 60);
    for s in &steps {
        assert_eq!(s["loss"], s["kd"], "the objective is the divergence: {s}");
        assert!(s["sample_tokens"].as_f64().unwrap() > 0.0, "{s}");
        assert!((0.0..=1.0).contains(&s["stopped"].as_f64().unwrap()), "{s}");
    }
    let evals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v.get("eval_kd").is_some())
        .collect();
    let at: Vec<u64> = evals.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(
        at,
        [0, 30, 60],
        "evaluated at the start, every 30 steps and at the end"
    );
    let (first, last) = (evals[0], evals[2]);
    let kd = |v: &serde_json::Value| v["eval_kd"].as_f64().unwrap();
    assert!(
        kd(last) < 0.7 * kd(first),
        "the held-out reverse KL falls: {} → {}",
        kd(first),
        kd(last)
    );
    // The known failure mode: a student that learns never to end its turn.
    let stopped = |v: &serde_json::Value| v["eval_stopped"].as_f64().unwrap();
    assert!(
        stopped(last) >= 0.9 && stopped(last) >= stopped(first) - 0.05,
        "the student still ends its turns: {} → {}",
        stopped(first),
        stopped(last)
    );
    assert!(first["pass_rate"].as_f64().is_some(), "{first}");
    assert_eq!(first["eval_problems"], last["eval_problems"]);
    let config = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(
        config.contains("[train.opd]")
            && config.contains("weight = 1.0")
            && config.contains("beta = 1.0"),
        "{config}"
    );
    // The distilled student is a checkpoint the other stages load, with the SFT student's
    // tokenizer.
    let model = out.join("model");
    assert_eq!(
        std::fs::read_to_string(model.join("tokenizer.json")).unwrap(),
        std::fs::read_to_string(sft.join("model/tokenizer.json")).unwrap()
    );

    // Resume from the middle: the same samples and updates, the same final weights.
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::remove_dir_all(&model).unwrap();
    common::drop_newest_checkpoint(&out.join("checkpoints"));
    let err = run_err(&mut opd(&corpus, &sft, &teacher, &out));
    assert!(err.contains("--resume"), "{err}");
    let resumed = run_ok(opd(&corpus, &sft, &teacher, &out).arg("--resume"));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("Resuming"));
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        weights,
        "a resumed run ends with the uninterrupted run's weights"
    );
    let again = metrics(&out);
    assert_eq!(again.iter().filter(|v| v.get("loss").is_some()).count(), 60);

    // Wrong set-ups, each refused in one line before any work.
    let mut cmd = opd(&corpus, &sft, &teacher, &d.join("w1"));
    refused(cmd.args(["--kd-weight", "0.5"]), "`kd.weight = 1`");
    let mut cmd = bin();
    cmd.args([
        "train",
        "--method",
        "opd",
        "--from-scratch",
        "--corpus",
        "c",
        "--out",
        "o",
    ]);
    cmd.args(["--kd-teacher", "t"]);
    refused(&mut cmd, "starts from a trained student");
    let mut cmd = bin();
    cmd.args([
        "train", "--method", "opd", "--base", "b", "--corpus", "c", "--out", "o",
    ]);
    refused(&mut cmd, "needs a teacher");
    let mut cmd = bin();
    cmd.args(["train", "--opd-prompts-per-step", "4", "--base", "b"]);
    cmd.args(["--corpus", "c", "--out", "o", "--kd-teacher", "t"]);
    refused(&mut cmd, "need `--method opd`");
    assert!(!d.join("w1").exists(), "nothing written for a refused run");

    // A learning rate far too high makes this student unlearn stopping: the run says so.
    let hot = run_ok(&mut opd_with(
        &corpus,
        &sft,
        teacher.join("model").as_os_str(),
        &d.join("hot"),
        ["0.05", "12"],
    ));
    let said = String::from_utf8_lossy(&hot.stderr);
    assert!(said.contains("it is learning not to stop"), "{said}");

    // The known failure, refused: a teacher whose turns end on `<|endoftext|>` (its template
    // and EOS) would teach the student, whose turns end on `<|im_end|>`, never to stop.
    let other = d.join("teacher-eot");
    std::fs::create_dir_all(other.join("model")).unwrap();
    for entry in std::fs::read_dir(teacher.join("model")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, other.join("model").join(path.file_name().unwrap())).unwrap();
    }
    let edit = |file: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let path = other.join("model").join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        change(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
    };
    edit("tokenizer_config.json", &|v| {
        let template = v["chat_template"]
            .as_str()
            .unwrap()
            .replace("<|im_end|>", "<|endoftext|>");
        v["chat_template"] = template.into();
        v["eos_token"] = "<|endoftext|>".into();
    });
    for file in ["generation_config.json", "config.json"] {
        edit(file, &|v| v["eos_token_id"] = 0.into());
    }
    let mut cmd = opd(&corpus, &sft, &other, &d.join("w2"));
    refused(&mut cmd, "never to stop");
    let err = run_err(&mut opd(&corpus, &sft, &other, &d.join("w2")));
    assert!(
        err.contains("`<|im_end|>` (id 2)") && err.contains("`<|endoftext|>` (id 0)"),
        "{err}"
    );
    assert!(!d.join("w2").exists(), "refused before anything is written");
}

/// `distill serve` on a free loopback port; killed on drop.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(model: &Path) -> Self {
        let mut child = bin()
            .arg("serve")
            .arg(model)
            .args(["--port", "0", "--served-model-name", "teacher"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("serve says where it listens").unwrap();
            if let Some(rest) = line
                .split(" at ")
                .nth(1)
                .filter(|_| line.starts_with("Serving"))
            {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining its output so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A teacher served by `distill serve` scores the student's samples as the same teacher loaded
/// beside the student does on its top k: the same divergence at the start and after the first
/// update (same samples: the student's weights are the same until then), within the f16 the
/// scores are kept in.
#[test]
fn an_endpoint_teacher_scores_as_the_loaded_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (corpus, teacher, sft) = task(d);
    let served = Served::start(&teacher.join("model"));
    let run = |out: &Path, teacher_arg: &str| {
        let mut cmd = opd_with(&corpus, &sft, teacher_arg.as_ref(), out, ["0.005", "2"]);
        cmd.args(["--kd-top-k", "8"]);
        let said = run_ok(&mut cmd);
        (
            String::from_utf8_lossy(&said.stderr).into_owned(),
            metrics(out),
        )
    };
    let (said, endpoint) = run(&d.join("endpoint"), &served.url);
    assert!(
        said.contains("Teacher: `teacher` at") && said.contains("top 8 tokens"),
        "{said}"
    );
    assert!(!said.contains("warning"), "{said}");
    let local = teacher.join("model");
    let (_, loaded) = run(&d.join("loaded"), local.to_str().unwrap());
    let value = |lines: &[serde_json::Value], key: &str, step: u64| {
        lines
            .iter()
            .find(|v| v["step"] == step && v.get(key).is_some())
            .and_then(|v| v[key].as_f64())
            .unwrap_or_else(|| panic!("no `{key}` at step {step}"))
    };
    for (key, step) in [("eval_kd", 0), ("kd", 1)] {
        let (a, b) = (value(&endpoint, key, step), value(&loaded, key, step));
        eprintln!("{key} at step {step}: endpoint {a}, loaded {b}");
        assert!(
            (a - b).abs() <= 5e-4 * b.abs(),
            "{key} at step {step}: endpoint {a}, loaded {b}"
        );
    }
    assert_eq!(
        value(&endpoint, "sample_tokens", 1),
        value(&loaded, "sample_tokens", 1)
    );

    // Wrong set-ups, each refused in one line before any work.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let w = d.join("w");
    let at = |url: &str| opd_with(&corpus, &sft, url.as_ref(), &w, ["0.005", "2"]);
    refused(
        at(&closed).args(["--kd-top-k", "8"]),
        &format!("cannot use the teacher endpoint `{closed}`"),
    );
    refused(
        &mut at(&served.url),
        "returns its top-k log-probabilities only",
    );
    refused(
        at(&served.url).args(["--kd-top-k", "8", "--kd-teacher-model", "other"]),
        "`other`",
    );
    let mut cmd = bin();
    cmd.args(["train", "--base", "b", "--corpus", "c", "--out", "o"]);
    cmd.args(["--kd-teacher", &served.url, "--kd-top-k", "8"]);
    refused(&mut cmd, "scores on-policy samples only");
    let mut cmd = opd(&corpus, &sft, &teacher, &w);
    refused(
        cmd.args(["--kd-teacher-model", "teacher"]),
        "`--kd-teacher-model` is for an endpoint teacher",
    );
    assert!(!w.exists(), "nothing written for a refused run");
}
