//! `distill inspect`, `distill convert` and `distill export` driven through the real binary:
//! what users see, including the one-line errors for bad paths.

mod common;
use common::assets;

use std::path::{Path, PathBuf};
use std::process::Command;

fn distill(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .output()
        .expect("run distill");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn fixture(name: &str) -> String {
    root()
        .join("models/tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn smollm2() -> String {
    root()
        .join("../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string()
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn inspect_reports_the_real_model() {
    if !assets::present(Path::new(&smollm2())) {
        return;
    }
    let (ok, stdout, stderr) = distill(&["inspect", &smollm2(), "--json"]);
    assert!(ok, "{stderr}");
    let r = json(&stdout);
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["format"], "gguf");
    assert_eq!(r["parameters"], 134_515_008);
    assert_eq!(r["layers"], 30);
    assert_eq!(r["vocab_size"], 49152);
    assert_eq!(r["chat_template"], true);
    assert_eq!(r["eos_tokens"][0]["text"], "<|im_end|>");
    assert_eq!(r["tensor_types"]["q4_1"], 210);
    assert_eq!(r["context_length"], 8192);

    let (ok, stdout, _) = distill(&["inspect", &smollm2()]);
    assert!(ok);
    assert!(stdout.contains("134.5M (134515008)"), "{stdout}");
    assert!(stdout.contains("chat template  yes"), "{stdout}");
}

#[test]
fn inspect_reads_folders_in_both_config_layouts() {
    for (name, arch, tied) in [
        ("tiny-qwen2", "qwen2", false),
        ("tiny-qwen2-sharded", "qwen2", false),
        ("tiny-llama-bf16", "llama", true),
        ("tiny-qwen3", "qwen3", false),
    ] {
        let (ok, stdout, stderr) = distill(&["inspect", &fixture(name), "--json"]);
        assert!(ok, "{name}: {stderr}");
        let r = json(&stdout);
        assert_eq!(r["architecture"], arch, "{name}");
        assert_eq!(r["tie_word_embeddings"], tied, "{name}");
        assert_eq!(
            r["tokenizer_vocab_size"],
            serde_json::Value::Null,
            "{name}: no tokenizer in fixture"
        );
    }
    // Qwen3's explicit head_dim (32, not 64 / 4) is what the model runs with.
    let (_, stdout, _) = distill(&["inspect", &fixture("tiny-qwen3"), "--json"]);
    assert_eq!(json(&stdout)["head_dim"], 32);
    let (ok, stdout, stderr) = distill(&["inspect", &fixture("tiny-qwen3.gguf"), "--json"]);
    assert!(ok, "{stderr}");
    assert_eq!(json(&stdout)["architecture"], "qwen3");
    assert_eq!(json(&stdout)["head_dim"], 32);
    let (_, stdout, _) = distill(&["inspect", &fixture("tiny-qwen3")]);
    assert!(stdout.contains("architecture  qwen3"), "{stdout}");
    let (_, stdout, _) = distill(&["inspect", &fixture("tiny-llama-bf16"), "--json"]);
    assert_eq!(json(&stdout)["tensor_types"]["bf16"], 20);
}

#[test]
fn convert_writes_a_folder_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-hf");
    let out_s = out.display().to_string();
    let (ok, stdout, stderr) = distill(&["convert", &fixture("tiny-llama.gguf"), &out_s]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(&format!("wrote {out_s} (llama")),
        "{stdout}"
    );
    for file in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(file).is_file(), "missing {file}");
    }
    let (_, before, _) = distill(&["inspect", &fixture("tiny-llama.gguf"), "--json"]);
    let (ok, after, _) = distill(&["inspect", &out_s, "--json"]);
    assert!(ok);
    let (before, after) = (json(&before), json(&after));
    for key in [
        "parameters",
        "vocab_size",
        "layers",
        "hidden_size",
        "kv_heads",
        "chat_template",
        "eos_tokens",
        "bos_token",
    ] {
        assert_eq!(before[key], after[key], "{key}");
    }
    assert_eq!(after["format"], "huggingface");
    // Converting again into the same (now non-empty) folder is refused and leaves it intact.
    let (ok, _, stderr) = distill(&["convert", &fixture("tiny-llama.gguf"), &out_s]);
    assert!(!ok);
    assert!(stderr.contains("output folder is not empty"), "{stderr}");
    assert!(out.join("model.safetensors").is_file());
}

/// `convert --keep-layers`: a cut student's starting point as a folder (layers renumbered; the
/// cut itself is checked against transformers in `models/tests/prune.rs`).
#[test]
fn convert_keeps_the_layers_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cut");
    let out_s = out.display().to_string();
    let gguf = fixture("tiny-qwen2.gguf");
    let (ok, _, stderr) = distill(&["convert", &gguf, &out_s, "--keep-layers", "1"]);
    assert!(ok, "{stderr}");
    let (_, whole, _) = distill(&["inspect", &gguf, "--json"]);
    let (_, cut, _) = distill(&["inspect", &out_s, "--json"]);
    let (whole, cut) = (json(&whole), json(&cut));
    assert_eq!(
        (whole["layers"].clone(), cut["layers"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(cut["vocab_size"], whole["vocab_size"]);
    assert_eq!(cut["chat_template"], true);

    let (ok, _, stderr) = distill(&[
        "convert",
        &gguf,
        &format!("{out_s}2"),
        "--keep-layers",
        "0-2",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("`--keep-layers` 0-2: cannot keep layer 2: the model has 2 layers (0-1)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("cut2").exists());
}

#[test]
fn export_writes_a_gguf_and_a_modelfile() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.q8_0.gguf");
    let out_s = out.display().to_string();
    let (ok, stdout, stderr) = distill(&[
        "export",
        &fixture("tiny-qwen2.gguf"),
        "--gguf",
        &out_s,
        "--quant",
        "q8_0",
    ]);
    assert!(ok, "{stderr}");
    let modelfile = dir.path().join("tiny.q8_0.Modelfile");
    assert_eq!(
        stdout,
        format!(
            "wrote {out_s} (q8_0, 119.1 KiB; f32 ×11, q8_0 ×16; pre-tokenizer qwen2)\n\
             wrote {} (ChatML template); load it with `ollama create tiny.q8_0 -f {}`\n",
            modelfile.display(),
            modelfile.display()
        )
    );
    assert!(std::fs::read_to_string(&modelfile)
        .unwrap()
        .contains("FROM ./tiny.q8_0.gguf\n"));
    let (ok, report, _) = distill(&["inspect", &out_s, "--json"]);
    assert!(ok);
    let report = json(&report);
    assert_eq!(report["tensor_types"]["q8_0"], 16);
    assert_eq!(report["architecture"], "qwen2");

    let (ok, _, stderr) = distill(&["export", &fixture("tiny-qwen2"), "--gguf", &out_s]);
    assert!(!ok);
    assert_eq!(
        stderr,
        format!(
            "error: Cannot export `{}` as GGUF: it has no tokenizer (tokenizer.json); llama.cpp \
             needs one\n",
            fixture("tiny-qwen2")
        )
    );
    let (ok, _, stderr) = distill(&["export", &out_s, "--gguf", &out_s, "--quant", "q5_k_m"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown quantization `q5_k_m` (choose f32, f16, q8_0, q4_k_m, q6_k)"),
        "{stderr}"
    );
}

#[test]
fn bad_paths_give_one_clear_line() {
    let (ok, _, stderr) = distill(&["inspect", "/no/such/model.gguf"]);
    assert!(!ok);
    assert!(
        stderr.starts_with("error: cannot open `/no/such/model.gguf`"),
        "{stderr}"
    );
    assert!(stderr.contains("no such file or folder"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let not_gguf = dir.path().join("model.gguf");
    std::fs::write(&not_gguf, b"definitely not a gguf file").unwrap();
    let (ok, _, stderr) = distill(&["inspect", &not_gguf.display().to_string()]);
    assert!(!ok);
    assert!(stderr.contains("not a GGUF file"), "{stderr}");

    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let (ok, _, stderr) = distill(&["inspect", &dir.path().display().to_string()]);
    assert!(!ok);
    assert!(
        stderr.contains("Unsupported architecture `mamba` (supported: qwen2, qwen3, llama)"),
        "{stderr}"
    );
}

/// A `distill train` output folder stands for the model it holds (`OUT/model`), said on stderr;
/// a folder with a config of its own is that model, whatever it holds.
#[test]
fn a_training_run_folder_opens_as_its_model() {
    let run = tempfile::tempdir().unwrap();
    let model = run.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-qwen2")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    std::fs::write(run.path().join("train_config.toml"), "").unwrap();
    let run_s = run.path().display().to_string();
    let (ok, stdout, stderr) = distill(&["inspect", &run_s, "--json"]);
    assert!(ok, "{stderr}");
    assert_eq!(json(&stdout)["architecture"], "qwen2");
    assert!(
        stderr.contains(&format!(
            "`{run_s}` is a training run: using its model `{}`",
            model.display()
        )),
        "{stderr}"
    );

    std::fs::write(run.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let (ok, _, stderr) = distill(&["inspect", &run_s]);
    assert!(!ok && stderr.contains("`mamba`"), "{stderr}");
}

/// The asset rule every crate's tests share: skipped loudly at home, a failure in CI.
#[test]
fn a_missing_asset_skips_locally_and_fails_in_ci() {
    let missing = Path::new("/no/such/asset.gguf");
    assert!(!assets::present_in(missing, false));
    assert!(std::panic::catch_unwind(|| assets::present_in(missing, true)).is_err());
    assert!(assets::present_in(&root(), true));
    for (value, ci) in [
        (None, false),
        (Some(""), false),
        (Some("0"), false),
        (Some("false"), false),
        (Some("true"), true),
        (Some("1"), true),
    ] {
        assert_eq!(assets::in_ci(value), ci, "{value:?}");
    }
}
