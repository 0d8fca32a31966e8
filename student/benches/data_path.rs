//! Data-path benchmark (not a test): a synthetic R1-style corpus → token cache → the stream of
//! training rows, at the scale of DeepSeek-R1's ~800k distillation samples, with bounded memory.
//!
//!     cargo bench -p distill-student --bench data_path [-- --samples N --tokens T --keep DIR]
//!
//! Defaults: 800,000 samples of T = 512 tokens on average (reasoning lengths vary 0.5–1.5 T).
//! Stages, each in its own child process so its peak RSS (`VmHWM`) is its own:
//! 1. `corpus`: write the parquet corpus (not part of the data path; it sets the scene);
//! 2. `cache`: tokenise into the token cache (what the first `distill train` does): rows/s,
//!    tokens/s, peak RSS;
//! 3. `stream`: open the cache, pack (`max_seq_len` 4096), fingerprint, and read every training
//!    row in the trainer's shuffled order (what every epoch and every `--resume` does): tokens/s,
//!    peak RSS, and the peak of anonymous memory (RSS minus the mapped token pages, which belong
//!    to the page cache);
//! 4. `memory`: the in-memory path (`read_corpus` + `data::build`, what `distill train` did
//!    before the cache) on the first `N / 8` samples, as the reference: its peak RSS grows with
//!    the corpus, the cache's does not.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use distill_corpus::record::{self, Record};
use distill_corpus::shards::{ShardWriter, WriterOptions};
use distill_models::chat::ChatTemplate;
use distill_student::batch::Rows;
use distill_student::data::token_cache::{Sources, TokenCache};
use distill_student::data::{self, DataConfig, Renderer};
use distill_student::tokenizer_train::{self, TokenizerTrainConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const MAX_SEQ_LEN: usize = 4096;
const WRITE_BATCH: usize = 1024;

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let samples: usize = opt("--samples").map_or(Ok(800_000), |s| s.parse())?;
    let tokens: usize = opt("--tokens").map_or(Ok(512), |s| s.parse())?;
    let work = match opt("--keep") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join("distill-bench-data-path"),
    };
    if let Some(stage) = opt("--child") {
        return child(&stage, &work, samples, tokens);
    }
    std::fs::create_dir_all(&work)?;
    println!(
        "data path: {samples} samples of ~{tokens} tokens, max_seq_len {MAX_SEQ_LEN}, {} threads, in `{}`",
        rayon::current_num_threads(),
        work.display()
    );
    let exe = std::env::current_exe()?;
    for stage in ["corpus", "cache", "stream", "memory"] {
        let out = Command::new(&exe)
            .args(["--child", stage, "--samples", &samples.to_string()])
            .args(["--tokens", &tokens.to_string(), "--keep"])
            .arg(&work)
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            return Err(format!("stage `{stage}` failed").into());
        }
    }
    if opt("--keep").is_none() {
        std::fs::remove_dir_all(&work)?;
    }
    Ok(())
}

fn child(stage: &str, work: &Path, samples: usize, tokens: usize) -> BoxResult<()> {
    let corpus = work.join("corpus");
    let renderer = renderer(tokens)?;
    let config = DataConfig {
        max_seq_len: MAX_SEQ_LEN,
        eval_fraction: 0.01,
        ..DataConfig::default()
    };
    let inputs = [corpus.clone()];
    let sources = Sources {
        corpus: &inputs,
        eval_corpus: None,
    };
    let sampler = AnonSampler::start();
    let start = Instant::now();
    match stage {
        "corpus" => {
            if corpus.is_dir() {
                println!("corpus: reusing `{}`", corpus.display());
                return Ok(());
            }
            write_corpus(&corpus, samples, tokens)?;
            let bytes = folder_bytes(&corpus);
            report(
                stage,
                start,
                &format!("{samples} rows, {:.1} GB of parquet", bytes as f64 / 1e9),
                None,
            );
        }
        "cache" => {
            let root = work.join("cache");
            if root.exists() {
                std::fs::remove_dir_all(&root)?;
            }
            let cache =
                TokenCache::open_or_build(&root, sources, &renderer, &config, &mut |_, _| {})?;
            let secs = start.elapsed().as_secs_f64();
            let n = cache.info().tokens;
            report(
                stage,
                start,
                &format!(
                    "{:.0} rows/s, {:.2} M tokens/s, {n} tokens, {:.1} GB on disk",
                    samples as f64 / secs,
                    n as f64 / secs / 1e6,
                    folder_bytes(cache.dir()) as f64 / 1e9
                ),
                Some(&sampler),
            );
        }
        "stream" => {
            let cache = TokenCache::open_or_build(
                &work.join("cache"),
                sources,
                &renderer,
                &config,
                &mut |_, _| {},
            )?;
            if !cache.reused() {
                return Err("the cache stage did not leave a cache".into());
            }
            let dataset = cache.dataset(&config)?;
            let opened = start.elapsed().as_secs_f64();
            let fp = dataset.train.fingerprint();
            let fingerprinted = start.elapsed().as_secs_f64();
            // One epoch in the trainer's order: a seeded shuffle of the packed rows.
            let mut order: Vec<usize> = (0..dataset.train.count()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
            let t0 = Instant::now();
            let (mut seen, mut labels) = (0usize, 0usize);
            for &i in &order {
                let row = dataset.train.row(i);
                seen += row.len();
                labels += row.label_count();
            }
            let secs = t0.elapsed().as_secs_f64();
            report(
                stage,
                start,
                &format!(
                    "open+pack {opened:.1} s ({} rows, {:.0}% full), fingerprint {:.1} s, epoch read {:.2} M tokens/s ({seen} tokens, {labels} labelled, fingerprint rows {})",
                    dataset.train.count(),
                    dataset.report.fill_ratio * 100.0,
                    fingerprinted - opened,
                    seen as f64 / secs / 1e6,
                    fp.rows
                ),
                Some(&sampler),
            );
        }
        "memory" => {
            let part = work.join("corpus-eighth");
            if !part.is_dir() {
                write_corpus(&part, samples / 8, tokens)?;
            }
            let t0 = Instant::now();
            let conversations = data::read_corpus(&[part])?;
            let built = data::build(&conversations, &renderer, &config)?;
            let secs = t0.elapsed().as_secs_f64();
            report(
                stage,
                start,
                &format!(
                    "{} samples in memory: {:.2} M tokens/s, {} tokens",
                    samples / 8,
                    built.report.train_tokens as f64 / secs / 1e6,
                    built.report.train_tokens
                ),
                Some(&sampler),
            );
        }
        other => return Err(format!("unknown stage `{other}`").into()),
    }
    Ok(())
}

fn report(stage: &str, start: Instant, detail: &str, sampler: Option<&AnonSampler>) {
    let memory = match sampler {
        Some(s) => format!(
            "; peak RSS {:.0} MB, peak anonymous {:.0} MB",
            status_kb("VmHWM") as f64 / 1024.0,
            s.peak_kb() as f64 / 1024.0
        ),
        None => String::new(),
    };
    println!(
        "{stage}: {:.1} s, {detail}{memory}",
        start.elapsed().as_secs_f64()
    );
}

/// A value of `/proc/self/status` in kB (0 where there is no procfs).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(&format!("{field}:")))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The peak of `RssAnon` (memory the process owns, not mapped file pages), sampled every 20 ms.
struct AnonSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl AnonSampler {
    fn start() -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        std::thread::spawn(move || loop {
            p.fetch_max(status_kb("RssAnon"), std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        Self { peak }
    }

    fn peak_kb(&self) -> u64 {
        self.peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(status_kb("RssAnon"))
    }
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Sample `i`: an arithmetic problem with a chain of thought of about `tokens` tokens (0.5–1.5×)
/// and a boxed answer; two samples per problem, as a teacher writes several.
fn sample(i: usize, tokens: usize) -> Record {
    let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
    let (a, b): (u32, u32) = (rng.random_range(10..1000), rng.random_range(10..1000));
    let prompt = format!("Lena has {a} marbles and wins {b} more. How many marbles does she have?");
    let target = rng.random_range(tokens / 2..=tokens * 3 / 2).max(8);
    let mut reasoning = String::new();
    let mut k = 0u32;
    // About 1.6 characters per token with the benchmark's tokenizer (digits are one token each).
    while reasoning.len() * 5 < target * 8 {
        let x: u32 = rng.random_range(1..100);
        reasoning.push_str(&format!("Step {k}: {a} + {x} = {}. ", a + x));
        k += 1;
    }
    let completion = format!("She has \\boxed{{{}}} marbles.", a + b);
    Record {
        correct: Some(true),
        ..Record::sample(
            &format!("p{}", i / 2),
            (i % 2) as i32,
            &prompt,
            &reasoning,
            &completion,
        )
    }
}

fn write_corpus(dir: &Path, samples: usize, tokens: usize) -> BoxResult<()> {
    let mut w = ShardWriter::create(dir, record::schema(), WriterOptions::default())?;
    for start in (0..samples).step_by(WRITE_BATCH) {
        let records: Vec<Record> = (start..(start + WRITE_BATCH).min(samples))
            .map(|i| sample(i, tokens))
            .collect();
        w.write(&record::records_to_batch(&records)?)?;
    }
    w.finish()?;
    Ok(())
}

/// A from-scratch tokenizer learned on the first samples, with the ChatML template.
fn renderer(tokens: usize) -> BoxResult<Renderer> {
    let texts: Vec<String> = (0..200)
        .map(|i| {
            let r = sample(i, tokens.min(256));
            ChatTemplate::chatml().render(&data::chat_messages(&r.messages), false)
        })
        .collect::<Result<_, _>>()?;
    let config = TokenizerTrainConfig {
        vocab_size: 1024,
        ..TokenizerTrainConfig::default()
    };
    let tokenizer = tokenizer_train::train(&texts, &config)?;
    let template = tokenizer
        .chat_template()?
        .unwrap_or_else(ChatTemplate::chatml);
    Ok(Renderer::new(tokenizer, template, &[])?)
}
