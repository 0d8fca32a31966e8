//! Training-step benchmark (not a test): distill against PyTorch on the same workload.
//!
//!     cargo bench -p distill-student --bench train_step [-- --threads N --steps K]
//!
//! Workloads, batch 4 × 256 tokens (all positions labelled), one optimizer step = forward +
//! loss + backward + global-norm clipping + AdamW (weight decay 0.1 on matrices):
//! - `tiny-32k`: a Llama-style model of ~11M parameters with a 32k vocabulary (tied head),
//!   distill with the chunked loss and with full logits (`loss_chunk_size = 0`);
//! - `smollm2-135m`: SmolLM2-135M-Instruct from `../shared/models/*.Q4_1.gguf`, dequantized to
//!   f32 (converted once to a Hugging Face folder that both sides load); then both again with
//!   activation checkpointing (distill's `activation_checkpointing`, transformers'
//!   `gradient_checkpointing_enable()`).
//!
//! Every measurement runs in its own child process so peak RSS (`VmHWM`) is the workload's
//! alone; PyTorch runs `student/bench/torch_step.py` with the venv's Python
//! (`DISTILL_PYTHON`, default `/root/.cache/distill-venv/bin/python`) and the same threads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::Device;
use distill_models::{Checkpoint, Config};
use distill_student::batch::{PackedRow, IGNORE};
use distill_student::{StudentInit, Trainer, TrainerConfig};

const BATCH: usize = 4;
const SEQ: usize = 256;

/// The tiny benchmark model: 32k vocabulary, hidden 256, 4 layers; ~11.1M parameters.
const TINY: &str = r#"{
  "model_type": "llama", "vocab_size": 32000, "hidden_size": 256, "intermediate_size": 704,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
  "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
  "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02
}"#;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Measure {
    tokens_per_sec: f64,
    peak_rss_mb: f64,
    detail: String,
}

fn main() -> BoxResult<()> {
    // As the `distill` binary does, so the benchmark measures what users run.
    distill_models::alloc::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if let Some(spec) = opt("--child") {
        return child(&spec, opt("--model"), steps(&opt));
    }
    let threads: usize = opt("--threads")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let work = std::env::temp_dir().join("distill-bench");
    std::fs::create_dir_all(&work)?;
    let tiny_config = work.join("tiny-32k.json");
    std::fs::write(&tiny_config, TINY)?;
    println!("distill training-step benchmark: batch {BATCH} x {SEQ} tokens, {threads} threads");
    println!(
        "{:<28} {:>12} {:>12} {:>10}  detail",
        "workload", "tokens/s", "peak RSS MB", ""
    );
    let tiny_torch = torch(&["--tiny-config", path_str(&tiny_config)?], threads, &opt);
    let tiny_chunked = distill("tiny-chunked", None, threads, &opt)?;
    let tiny_full = distill("tiny-full", None, threads, &opt)?;
    report("tiny-32k  torch", &tiny_torch);
    report(
        "tiny-32k  distill (chunked)",
        &Ok(tiny_chunked.clone_measure()),
    );
    report("tiny-32k  distill (full)", &Ok(tiny_full.clone_measure()));
    ratios("tiny-32k", &tiny_chunked, &tiny_torch);

    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        println!("smollm2-135m: skipped ({} not found)", gguf.display());
        return Ok(());
    }
    let hf = work.join("smollm2-135m-f32");
    if !hf.join("config.json").is_file() {
        Checkpoint::open(&gguf)?.save_hf(&hf, 2 << 30)?;
    }
    let s_torch = torch(&["--model", path_str(&hf)?], threads, &opt);
    let s_distill = distill("smollm2", Some(&hf), threads, &opt)?;
    report("smollm2-135m torch", &s_torch);
    report("smollm2-135m distill", &Ok(s_distill.clone_measure()));
    ratios("smollm2-135m", &s_distill, &s_torch);
    let r_torch = torch(
        &["--model", path_str(&hf)?, "--gradient-checkpointing"],
        threads,
        &opt,
    );
    let r_distill = distill("smollm2-recompute", Some(&hf), threads, &opt)?;
    report("smollm2-135m torch (ckpt)", &r_torch);
    report(
        "smollm2-135m distill (ckpt)",
        &Ok(r_distill.clone_measure()),
    );
    ratios("smollm2-135m, checkpointed", &r_distill, &r_torch);
    println!(
        "smollm2-135m distill: checkpointed/full tokens/s {:.2}x, peak RSS {:.2}x",
        r_distill.tokens_per_sec / s_distill.tokens_per_sec,
        r_distill.peak_rss_mb / s_distill.peak_rss_mb
    );
    Ok(())
}

impl Measure {
    fn clone_measure(&self) -> Measure {
        Measure {
            tokens_per_sec: self.tokens_per_sec,
            peak_rss_mb: self.peak_rss_mb,
            detail: self.detail.clone(),
        }
    }
}

fn steps(opt: &dyn Fn(&str) -> Option<String>) -> usize {
    opt("--steps").and_then(|s| s.parse().ok()).unwrap_or(3)
}

fn path_str(p: &Path) -> BoxResult<&str> {
    p.to_str().ok_or_else(|| "non-UTF-8 path".into())
}

fn report(name: &str, m: &BoxResult<Measure>) {
    match m {
        Ok(m) => println!(
            "{name:<28} {:>12.0} {:>12.0} {:>10}  {}",
            m.tokens_per_sec, m.peak_rss_mb, "", m.detail
        ),
        Err(e) => println!("{name:<28} failed: {e}"),
    }
}

fn ratios(name: &str, distill: &Measure, torch: &BoxResult<Measure>) {
    if let Ok(t) = torch {
        println!(
            "{name}: distill/torch tokens/s {:.2}x, peak RSS {:.2}x",
            distill.tokens_per_sec / t.tokens_per_sec,
            distill.peak_rss_mb / t.peak_rss_mb
        );
    }
}

/// Runs this binary as a child measuring one distill workload.
fn distill(
    spec: &str,
    model: Option<&Path>,
    threads: usize,
    opt: &dyn Fn(&str) -> Option<String>,
) -> BoxResult<Measure> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["--child", spec, "--steps", &steps(opt).to_string()])
        .env("RAYON_NUM_THREADS", threads.to_string());
    if let Some(m) = model {
        cmd.args(["--model", path_str(m)?]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn torch(
    model_args: &[&str],
    threads: usize,
    opt: &dyn Fn(&str) -> Option<String>,
) -> BoxResult<Measure> {
    let python = std::env::var("DISTILL_PYTHON")
        .unwrap_or_else(|_| "/root/.cache/distill-venv/bin/python".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_step.py");
    let out = Command::new(python)
        .arg(script)
        .args(model_args)
        .args(["--threads", &threads.to_string()])
        .args(["--batch", &BATCH.to_string(), "--seq", &SEQ.to_string()])
        .args(["--steps", &steps(opt).to_string()])
        .output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(stdout: &str) -> BoxResult<Measure> {
    let line = stdout.lines().last().ok_or("no output")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let num = |k: &str| v[k].as_f64().ok_or_else(|| format!("no `{k}` in `{line}`"));
    Ok(Measure {
        tokens_per_sec: num("tokens_per_sec")?,
        peak_rss_mb: num("peak_rss_mb")?,
        detail: v["detail"].as_str().unwrap_or("").to_string(),
    })
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One measurement: warm-up step, then `steps` timed steps; prints a JSON line.
fn child(spec: &str, model: Option<String>, steps: usize) -> BoxResult<()> {
    let dev = Device::Cpu;
    let init = match model {
        Some(m) => StudentInit::from_checkpoint(&Checkpoint::open(&PathBuf::from(m))?)?,
        None => {
            let config = Config::from_json_str(TINY, Path::new("tiny-32k.json"))?;
            StudentInit::from_scratch(config, Default::default(), None, 0)?
        }
    };
    let vocab = init.config.spec()?.vocab_size as u64;
    let config = TrainerConfig {
        micro_batch_size: BATCH,
        loss_chunk_size: if spec == "tiny-full" { 0 } else { 1024 },
        activation_checkpointing: spec.ends_with("-recompute"),
        optim: distill_student::optim::AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut trainer = Trainer::new(init, config, &dev)?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let rows: Vec<PackedRow> = (0..BATCH)
        .map(|_| {
            let ids: Vec<u32> = (0..SEQ)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % vocab) as u32
                })
                .collect();
            let mut labels: Vec<i64> = ids[1..].iter().map(|&x| x as i64).collect();
            labels.push(IGNORE);
            PackedRow {
                input_ids: ids,
                position_ids: (0..SEQ as u32).collect(),
                labels,
                teacher: None,
            }
        })
        .collect();
    let batch = vec![rows.iter().collect::<Vec<_>>()];
    trainer.train_step(&batch)?;
    let (mut fwd, mut bwd, mut opt) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let start = Instant::now();
    for _ in 0..steps {
        let m = trainer.train_step(&batch)?;
        fwd += m.timings.forward;
        bwd += m.timings.backward;
        opt += m.timings.optimizer;
    }
    let per = start.elapsed().as_secs_f64() / steps as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    println!(
        "{}",
        serde_json::json!({
            "tokens_per_sec": (BATCH * SEQ) as f64 / per,
            "peak_rss_mb": peak_rss_mb(),
            "detail": format!(
                "step {:.0} ms = forward+loss {:.0} + backward {:.0} + optimizer {:.0}",
                per * 1000.0, ms(fwd), ms(bwd), ms(opt)
            ),
        })
    );
    Ok(())
}
