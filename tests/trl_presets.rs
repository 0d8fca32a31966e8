//! The TRL presets (`pipelines/presets/trl-{7b,32b,70b}.toml`): the recipe, accelerate config,
//! launch and Slurm scripts they produce for their base models (architectures from
//! `tests/fixtures/trl/configs/`) and a fixed corpus length profile must equal the golden copies
//! in `tests/fixtures/trl/<preset>/` byte for byte. After an intended change, regenerate them
//! with `DISTILL_BLESS=1 cargo test --release --test trl_presets` and review the diff.

use std::path::{Path, PathBuf};

use distill::student_cmd::config;
use distill::student_cmd::trl::dataset::LengthStats;
use distill::student_cmd::trl::job::Job;
use distill_models::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A reasoning corpus of 100k documents whose longest is 16300 tokens.
const LENGTHS: LengthStats = LengthStats {
    documents: 100_000,
    tokens: 812_345_678,
    mean: 8123.45678,
    p50: 7200,
    p90: 13_100,
    p99: 15_870,
    max: 16_300,
};

fn job_files(preset: &str, model_config: &str) -> Vec<(&'static str, String)> {
    let path = root().join(format!("pipelines/presets/trl-{preset}.toml"));
    let mut settings = config::load(&path).unwrap();
    settings.corpus = Some("corpus/split/train".into());
    settings.out = Some(format!("/scratch/distill/{preset}").into());
    settings.validate().unwrap();
    let config_path = root().join("tests/fixtures/trl/configs").join(model_config);
    let spec = Config::load(&config_path).unwrap().spec().unwrap();
    let base = settings.base.clone().unwrap();
    let job = Job {
        settings: &settings,
        model: base.display().to_string(),
        revision: None,
        spec,
        lengths: LENGTHS,
        has_eval: true,
        out: settings.out.clone().unwrap(),
        chat_template: false,
    };
    job.files()
}

fn check(preset: &str, model_config: &str) {
    let dir = root().join("tests/fixtures/trl").join(preset);
    let bless = std::env::var_os("DISTILL_BLESS").is_some();
    for (name, text) in job_files(preset, model_config) {
        let golden = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "cannot read `{}` ({e}); write it with DISTILL_BLESS=1",
                golden.display()
            )
        });
        assert!(
            text == expected,
            "`{}` differs from what preset `{preset}` generates now:\n{}",
            golden.display(),
            first_difference(&expected, &text)
        );
    }
}

/// The first differing line, for a readable failure.
fn first_difference(expected: &str, actual: &str) -> String {
    let mut lines = expected.lines().zip(actual.lines()).enumerate();
    match lines.find(|(_, (e, a))| e != a) {
        Some((i, (e, a))) => format!("line {}:\n  golden: {e}\n  now:    {a}", i + 1),
        None => format!(
            "one is longer ({} vs {} lines)",
            expected.lines().count(),
            actual.lines().count()
        ),
    }
}

#[test]
fn preset_7b_zero3_one_node() {
    check("7b", "qwen2.5-7b-instruct.json");
}

#[test]
fn preset_32b_fsdp2_two_nodes() {
    check("32b", "qwen2.5-32b-instruct.json");
}

#[test]
fn preset_70b_zero3_offload_two_nodes() {
    check("70b", "llama-3.3-70b-instruct.json");
}

/// The files the presets describe: what the 70B job must say, independent of the golden copies.
#[test]
fn preset_70b_says_what_the_issue_asks() {
    let files = job_files("70b", "llama-3.3-70b-instruct.json");
    let file = |name: &str| {
        files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let recipe = file("recipe.yaml");
    for line in [
        "model_name_or_path: \"meta-llama/Llama-3.3-70B-Instruct\"",
        "max_length: 16320",
        "assistant_only_loss: true",
        "learning_rate: 0.00001",
        "lr_scheduler_type: \"cosine_with_min_lr\"",
        "  min_lr_rate: 0.1",
        "warmup_steps: 30",
        "num_train_epochs: 2.0",
        "per_device_train_batch_size: 1",
        "gradient_accumulation_steps: 8",
        "bf16: true",
        "activation_checkpointing: true",
        "save_steps: 100",
        "eval_steps: 100",
    ] {
        assert!(
            recipe.lines().any(|l| l == line),
            "recipe lacks `{line}`:\n{recipe}"
        );
    }
    let accelerate = file("accelerate.yaml");
    for line in [
        "distributed_type: \"DEEPSPEED\"",
        "  zero_stage: 3",
        "  offload_optimizer_device: \"cpu\"",
        "  offload_param_device: \"none\"",
        "mixed_precision: \"bf16\"",
        "num_machines: 2",
        "num_processes: 16",
    ] {
        assert!(
            accelerate.lines().any(|l| l == line),
            "accelerate.yaml lacks `{line}`:\n{accelerate}"
        );
    }
    let slurm = file("slurm.sbatch");
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --chdir=/scratch/distill/70b",
    ] {
        assert!(slurm.lines().any(|l| l == line), "{slurm}");
    }
    assert!(Path::new(&root().join("engines/trl/distill_sft.py")).is_file());
}
