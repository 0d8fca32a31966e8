//! `--device` / `--dtype` on the command line: a CPU-only binary asked for a GPU answers in one
//! line naming the build flag before reading anything; bad values are named; pipeline files
//! pass `[pipeline] device` to every model stage; generation runs in bf16 on the tensor path.

mod common;
use common::{failing, ok};

use std::path::{Path, PathBuf};

use distill_models::Checkpoint;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures")
        .join(name)
}

/// The error line `main` prints (the last line of stderr).
fn error_line(stderr: &str) -> &str {
    stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("")
}

#[test]
#[cfg(not(feature = "cuda"))]
fn cuda_on_a_cpu_only_binary_names_the_build_flag_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let missing = dir.path().join("no-such-corpus");
    let err = failing(&[
        "train",
        "--device",
        "cuda",
        "--from-scratch",
        "--corpus",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let line = error_line(&err);
    assert!(line.contains("--features cuda"), "{err}");
    assert!(
        !err.contains("no-such-corpus"),
        "read the corpus first: {err}"
    );
    assert!(!out.exists(), "wrote output before failing");

    let problems = dir.path().join("p.jsonl");
    std::fs::write(
        &problems,
        "{\"id\":\"1\",\"problem\":\"1+1?\",\"answer\":\"2\"}\n",
    )
    .unwrap();
    for cmd in [
        vec![
            "generate",
            "--problems",
            problems.to_str().unwrap(),
            "--model",
            fixture("tiny-llama.gguf").to_str().unwrap(),
            "--out",
            dir.path().join("gen").to_str().unwrap(),
            "--device",
            "cuda:1",
        ],
        vec![
            "serve",
            fixture("tiny-llama.gguf").to_str().unwrap(),
            "--device",
            "cuda",
        ],
    ] {
        let err = failing(&cmd);
        assert!(
            error_line(&err).contains("--features cuda"),
            "{cmd:?}: {err}"
        );
    }
}

#[test]
fn bad_device_and_dtype_values_are_named() {
    let err = failing(&["train", "--device", "tpu", "--from-scratch"]);
    assert!(err.contains("tpu") && err.contains("cuda:N"), "{err}");
    let err = failing(&["train", "--dtype", "fp8", "--from-scratch"]);
    assert!(err.contains("fp8") && err.contains("bf16-pure"), "{err}");
    // f16 is for inference only.
    let dir = tempfile::tempdir().unwrap();
    let err = failing(&[
        "train",
        "--device",
        "cpu",
        "--dtype",
        "f16",
        "--from-scratch",
        "--corpus",
        dir.path().join("c").to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(error_line(&err).contains("inference only"), "{err}");
}

#[test]
fn pipeline_device_reaches_every_model_stage() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        r#"
[pipeline]
device = "cpu"
dtype = "bf16"
[problems]
count = 10
[teacher]
max_steps = 1
[generate]
samples = 1
[train]
max_steps = 1
dtype = "f32"
[compare]
samples = 1
"#,
    )
    .unwrap();
    let plan = ok(&["run", file.to_str().unwrap(), "--dry-run"]);
    let line = |stage: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(&format!("{stage} ")))
            .unwrap_or_else(|| panic!("no `{stage}` in {plan}"))
            .to_string()
    };
    for stage in ["teacher", "generate", "compare"] {
        let l = line(stage);
        assert!(
            l.contains("--device cpu") && l.contains("--dtype bf16"),
            "{l}"
        );
    }
    // A stage's own key wins over the pipeline's.
    let train = line("train");
    assert!(
        train.contains("--dtype f32") && !train.contains("bf16"),
        "{train}"
    );
    assert!(!line("problems").contains("--device"));
}

/// A checkpoint folder generates in bf16 on the CPU (the GPU's tensor path: device caches,
/// batched sampling) and says where it ran.
#[test]
fn generate_runs_in_bf16_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("p.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "{{\"id\":\"q{i}\",\"problem\":\"What is {i} + {i}?\",\"answer\":\"{}\"}}",
                2 * i
            )
        })
        .collect();
    std::fs::write(&problems, lines.join("\n")).unwrap();
    // A folder with a tokenizer: the tiny GGUF converted (f32 weights, run here in bf16).
    let folder = dir.path().join("tiny-hf");
    ok(&[
        "convert",
        fixture("tiny-llama.gguf").to_str().unwrap(),
        folder.to_str().unwrap(),
    ]);
    let out = dir.path().join("gen");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args([
            "generate",
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--samples",
            "2",
        ])
        .args([
            "--max-new-tokens",
            "12",
            "--batch",
            "4",
            "--temperature",
            "0.7",
        ])
        .arg("--problems")
        .arg(&problems)
        .arg("--model")
        .arg(&folder)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("Teacher on cpu in bf16"), "{stderr}");
    let manifest = distill_corpus::shards::Manifest::read(Path::new(&out))
        .unwrap()
        .unwrap();
    assert_eq!(manifest.rows(), 12);
}

/// The GPU check's Rust side runs end to end on the CPU (against itself): every line is JSON,
/// parity holds, the fine-tune learns and its saved model reloads; the SFT and decode figures
/// come out for a config.
#[test]
fn check_device_runs_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture("tiny-qwen2/config.json");
    let stdout = ok(&[
        "--threads",
        "1",
        "check-device",
        "--device",
        "cpu",
        "--out",
        dir.path().to_str().unwrap(),
        "--sft-config",
        config.to_str().unwrap(),
        "--sft-batch",
        "1",
        "--sft-seq",
        "32",
        "--sft-steps",
        "2",
        "--gguf",
        fixture("tiny-llama.gguf").to_str().unwrap(),
        "--decode-tokens",
        "8",
    ]);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let of = |check: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["check"] == check).collect()
    };
    assert_eq!(of("parity").len(), 4);
    assert!(of("parity").iter().all(|l| l["ok"] == true), "{stdout}");
    assert_eq!(of("finetune")[0]["ok"], true, "{stdout}");
    assert_eq!(of("kd_top_k")[0]["ok"], true, "{stdout}");
    assert_eq!(of("kd_top_k")[0]["vocab"], 151_936, "{stdout}");
    assert!(of("sft")[0]["tok_s"].as_f64().unwrap() > 0.0, "{stdout}");
    // The second SFT run recomputes its layers: the same losses, to every bit on the CPU.
    assert_eq!(of("sft")[1]["activation_checkpointing"], true, "{stdout}");
    let same = of("activation_checkpointing_losses")[0];
    assert_eq!(same["max_rel_diff"], 0.0, "{stdout}");
    assert_eq!(same["steps"], 4, "{stdout}");
    assert_eq!(of("decode_speed").len(), 2);
    assert_eq!(of("decode_parity")[0]["matching_prefix"], 8);
    assert_eq!(of("summary")[0]["failures"], 0);
    let saved = Checkpoint::open(&dir.path().join("finetuned-tiny")).unwrap();
    assert_eq!(saved.config().spec().unwrap().hidden_size, 64);
}

/// On a CUDA build, the device check on the GPU (skipped, with the reason printed, when no GPU
/// is usable, e.g. a CUDA build run on the build machine with stub libraries).
#[test]
#[cfg(feature = "cuda")]
fn check_device_on_the_gpu() {
    if let Err(e) = distill_models::DeviceChoice::Cuda(0).resolve() {
        eprintln!("SKIPPED check_device_on_the_gpu: no usable GPU ({e})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stdout = ok(&[
        "check-device",
        "--device",
        "cuda",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(stdout.contains("\"failures\":0"), "{stdout}");
}
