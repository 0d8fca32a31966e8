//! `distill run` checks every stage against the models and files it will use before the first
//! stage runs: every preset passes a dry run whether or not its models are downloaded (what
//! cannot be checked is named), the R1 preset's `max_seq_len` fits Qwen2.5-Math-1.5B's
//! positions, and a `max_seq_len` or `max_new_tokens` a model cannot hold fails in one line
//! before any stage has written anything.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Runs `distill` in `cwd`, with `cwd/hf` as the Hugging Face home (so hub models are looked
/// up in a cache the test controls); success and stdout + stderr.
fn distill_in(cwd: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(cwd)
        .env("HF_HOME", cwd.join("hf"))
        .env_remove("HF_HUB_CACHE")
        .args(args)
        .output()
        .expect("run distill");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn preset(name: &str) -> PathBuf {
    root().join("pipelines").join(name)
}

/// Where a preset's user-provided models are absent (a fresh folder, an empty Hugging Face
/// cache), a dry run succeeds, downloads nothing, and names each model it could not check;
/// models that earlier stages make are named with them.
#[test]
fn every_preset_dry_runs_without_its_models() {
    let empty = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 5] = [
        (
            "demo.toml",
            &["stage `generate`: `model` `runs/demo/teacher/model` not checked: stage `teacher` makes it"],
        ),
        (
            "gsm8k-smollm2.toml",
            &[
                "stage `generate` needs `models/teacher.gguf`, which does not exist",
                "stage `train` needs `../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf`, which does not exist",
            ],
        ),
        (
            "local-teacher.toml",
            &[
                "stage `generate`: `model` `models/teacher` not checked: no such local path, and \
                 no hub model of that name in the Hugging Face cache yet (`distill run` downloads \
                 it before the first stage)",
                "stage `train`: `base` `Qwen/Qwen2.5-0.5B-Instruct` not checked: no such local \
                 path, and no hub model of that name in the Hugging Face cache yet",
            ],
        ),
        (
            "qwen-gsm8k-opd.toml",
            &[
                "stage `train` needs `runs/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`, which does not exist",
                "stage `opd`: `base` `runs/qwen-gsm8k-opd/student/model` not checked: stage `train` makes it",
            ],
        ),
        (
            "r1-distill-qwen-1.5b.toml",
            &[
                "stage `train`: `base` `Qwen/Qwen2.5-Math-1.5B` not checked: no such local path, \
                 and no hub model of that name in the Hugging Face cache yet",
                "stage `compare`: `models` `runs/r1-distill-qwen-1.5b/student/model` not checked: stage `train` makes it",
            ],
        ),
    ];
    for (name, notes) in cases {
        let (ok, log) = distill_in(
            empty.path(),
            &["run", preset(name).to_str().unwrap(), "--dry-run"],
        );
        assert!(ok, "{name}: {log}");
        for note in notes {
            assert!(log.contains(note), "{name}: no {note:?}\n{log}");
        }
    }
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

/// A stand-in for Qwen2.5-Math-1.5B in the test's Hugging Face cache, as a download leaves it:
/// its real `config.json` over the tiny GGUF's converted folder (the checks read the config and
/// tokenizer, never the weights).
fn qwen2_5_math_stub(cwd: &Path) {
    let repo = cwd.join("hf/hub/models--Qwen--Qwen2.5-Math-1.5B");
    let commit = "4a8c7d1e".repeat(5);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    let dir = repo.join("snapshots").join(&commit);
    let gguf = root().join("models/tests/fixtures/tiny-qwen2.gguf");
    let (ok, log) = distill_in(
        cwd,
        &["convert", gguf.to_str().unwrap(), dir.to_str().unwrap()],
    );
    assert!(ok, "{log}");
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960,
        "max_position_embeddings": 4096, "max_window_layers": 21, "num_attention_heads": 12,
        "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16", "use_sliding_window": false, "vocab_size": 151936
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn r1_preset_fits_the_positions_of_its_base() {
    let cwd = tempfile::tempdir().unwrap();
    qwen2_5_math_stub(cwd.path());
    let file = preset("r1-distill-qwen-1.5b.toml");
    let (ok, log) = distill_in(cwd.path(), &["run", file.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{log}");
    assert!(!log.contains("Qwen2.5-Math-1.5B` not checked"), "{log}");
    assert!(!log.contains("needs `Qwen/Qwen2.5-Math-1.5B`"), "{log}");

    // What the preset asked before: found before any stage runs, in one line.
    let text = std::fs::read_to_string(&file).unwrap();
    let old = cwd.path().join("old.toml");
    std::fs::write(
        &old,
        text.replace("max_seq_len = 4096", "max_seq_len = 16384"),
    )
    .unwrap();
    let (ok, log) = distill_in(cwd.path(), &["run", old.to_str().unwrap(), "--dry-run"]);
    assert!(!ok);
    assert!(
        log.contains("stage `train`: `max_seq_len` `16384` exceeds `Qwen/Qwen2.5-Math-1.5B`'s `max_position_embeddings` `4096`"),
        "{log}"
    );
    assert_eq!(log.trim().lines().count(), 1, "{log}");
}

/// A pipeline into `out` whose first stage writes 4 synthetic problems (and their solutions
/// corpus), for the stage tables a test appends.
fn pipeline_head(out: &Path) -> String {
    format!(
        "[pipeline]\nout = {:?}\n\n[problems]\ncount = 4\nseed = 1\n\n",
        out.display().to_string()
    )
}

/// A tiny local model with 2048 positions: a `max_seq_len` or `max_new_tokens` it cannot hold
/// stops the pipeline before its first stage writes anything.
#[test]
fn lengths_a_model_cannot_hold_fail_before_any_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let tiny = root().join("models/tests/fixtures/tiny-qwen2.gguf");
    let head = pipeline_head(&out);
    let cases = [
        (
            format!(
                "[train]\nbase = {:?}\ncorpus = {:?}\nmax_seq_len = 4096\nmax_steps = 1\n",
                tiny.display().to_string(),
                out.join("problems/solutions").display().to_string()
            ),
            "stage `train`: `max_seq_len` `4096` exceeds",
        ),
        (
            format!(
                "[generate]\nmodel = {:?}\nmax_new_tokens = 2048\n",
                tiny.display().to_string()
            ),
            "stage `generate`: `max_new_tokens` `2048` leaves no room for a prompt in",
        ),
    ];
    for (table, expected) in cases {
        let file = dir.path().join("p.toml");
        std::fs::write(&file, format!("{head}{table}")).unwrap();
        let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap()]);
        assert!(!ok, "{log}");
        assert!(
            log.contains(expected)
                && (log.contains("`max_position_embeddings` `2048`")
                    || log.contains("context of 2048 positions")),
            "{log}"
        );
        assert!(!out.exists(), "no stage may start: {log}");
    }
    // Within the model's positions the same pipeline gets past the check (and runs).
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "{head}[generate]\nmodel = {:?}\nmax_new_tokens = 8\nsamples = 1\nlimit = 1\n",
            tiny.display().to_string()
        ),
    )
    .unwrap();
    let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{log}");
}

/// `keep_layers` naming a layer the base lacks fails before any stage runs (not at `train`,
/// after the teacher's generation), naming the stage, the base and its layer count.
#[test]
fn layers_the_base_lacks_fail_before_any_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let tiny = root().join("models/tests/fixtures/tiny-qwen2.gguf");
    let text = format!(
        "{}[train]\nbase = {:?}\ncorpus = {:?}\nkeep_layers = \"0-2\"\nmax_seq_len = 64\n\
         max_steps = 1\n",
        pipeline_head(&out),
        tiny.display().to_string(),
        out.join("problems/solutions").display().to_string()
    );
    let file = dir.path().join("p.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap()]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("stage `train`: `base`")
            && log.contains("`keep_layers` 0-2: cannot keep layer 2: the model has 2 layers (0-1)"),
        "{log}"
    );
    assert!(!out.exists(), "no stage may start: {log}");
    // A list works as the text does, and layers the base has pass.
    std::fs::write(&file, text.replace("\"0-2\"", "[0, 1]")).unwrap();
    let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap(), "--dry-run"]);
    assert!(
        ok && log.contains("--keep-layers 0 --keep-layers 1"),
        "{log}"
    );
}

/// `dry_run = true` in `[train]` writes the TRL job and trains nothing: a later stage that
/// takes the student fails the check before any stage runs, naming both stages and the model;
/// as the last stage it passes.
#[test]
fn a_dry_run_train_stage_feeds_no_later_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let head = format!(
        "[pipeline]\nout = {:?}\n\n[problems]\ncount = 4\nseed = 1\n\n[train]\nengine = \"trl\"\nbase = {:?}\ncorpus = {:?}\nmax_seq_len = 64\ndry_run = true\n",
        out.display().to_string(),
        root().join("models/tests/fixtures/tiny-qwen2.gguf").display().to_string(),
        out.join("problems/solutions").display().to_string()
    );
    let file = dir.path().join("p.toml");
    std::fs::write(&file, format!("{head}\n[compare]\nlimit = 1\n")).unwrap();
    let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap(), "--dry-run"]);
    assert!(!ok, "{log}");
    let model = out.join("student/model").display().to_string();
    assert!(
        log.contains(&format!(
            "stage `train`: `dry_run = true` writes the TRL job without training it, so stage `compare` would have no `{model}`"
        )),
        "{log}"
    );
    assert!(!out.exists(), "no stage may start: {log}");

    std::fs::write(&file, &head).unwrap();
    let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{log}");
}

/// An `[opd]` stage whose teacher is an endpoint (`kd_teacher` a URL) passes the check: the
/// URL is neither a model path to look up nor an input file of the stage.
#[test]
fn an_endpoint_teacher_is_not_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(preset("demo-opd.toml"))
        .unwrap()
        .replace(
            "[opd]\n",
            "[opd]\nkd_teacher = \"http://127.0.0.1:9/v1\"\nkd_top_k = 8\n",
        );
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{log}");
    assert!(log.contains("--kd-teacher http://127.0.0.1:9/v1"), "{log}");
    assert!(!log.contains("needs `http://127.0.0.1:9/v1`"), "{log}");
}

/// With `generate` sampling an endpoint (`backend = "openai"`), an `[opd]` stage distils from
/// that endpoint: its URL, model name and key variable become the stage's teacher.
#[test]
fn opd_takes_the_endpoint_generate_sampled() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(preset("r1-distill-qwen-1.5b.toml")).unwrap()
        + "\n[opd]\nkd_top_k = 20\nmax_steps = 10\n";
    let file = dir.path().join("p.toml");
    std::fs::write(&file, text).unwrap();
    let (ok, log) = distill_in(dir.path(), &["run", file.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{log}");
    assert!(
        log.contains("--kd-teacher http://127.0.0.1:8000/v1")
            && log.contains("--kd-teacher-api-key-env DEEPSEEK_API_KEY")
            && log.contains("--kd-teacher-model deepseek-reasoner"),
        "{log}"
    );
}
