//! The corpus bench (not a test): synthesizes an 800k-row corpus with realistic trace lengths,
//! runs verify → filter → dedup → decontaminate → stats on it, printing rows/s per pass and peak
//! RSS, then runs `corpus/bench/pandas_equivalent.py` on the same files and prints the ratio.
//!
//!     cargo bench -p distill-corpus --bench chain -- [--rows N] [--dir PATH] [--no-pandas]
//!
//! Generation runs in a child process so the chain's peak RSS (VmHWM) is its own. Python comes
//! from `DISTILL_BENCH_PYTHON` (default: the venv in `/root/.cache/distill-venv-corpus`).

mod synth;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use distill_corpus::decontaminate::{self, DecontaminateConfig};
use distill_corpus::dedup::{self, DedupConfig};
use distill_corpus::filter::{self, FilterConfig};
use distill_corpus::pass::PassIo;
use distill_corpus::record;
use distill_corpus::shards::{ShardWriter, WriterOptions};
use distill_corpus::stats::{self, StatsConfig};
use distill_corpus::verify::{self, VerifyConfig};
use rayon::prelude::*;

const SEED: u64 = 20_250_101;
const EVAL_PROBLEMS: u64 = 1319;

struct Args {
    rows: u64,
    dir: PathBuf,
    pandas: bool,
    generate_only: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        rows: 800_000,
        dir: std::env::temp_dir().join("distill-corpus-bench"),
        pandas: true,
        generate_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rows" => args.rows = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.rows),
            "--dir" => args.dir = it.next().map(PathBuf::from).unwrap_or(args.dir),
            "--no-pandas" => args.pandas = false,
            "--generate-only" => args.generate_only = true,
            _ => {} // cargo passes `--bench`
        }
    }
    args
}

fn peak_rss_mib() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn generate(args: &Args) {
    let corpus = args.dir.join("corpus");
    let _ = fs::remove_dir_all(&corpus);
    let eval = synth::eval_set(SEED, EVAL_PROBLEMS);
    let mut f = fs::File::create(args.dir.join("eval.jsonl")).expect("create eval.jsonl");
    for (i, (q, a)) in eval.iter().enumerate() {
        let line = serde_json::json!({"question": q, "answer": format!("Worked out.\n#### {a}"), "idx": i});
        writeln!(f, "{line}").expect("write eval.jsonl");
    }
    let started = Instant::now();
    let mut w = ShardWriter::create(&corpus, record::schema(), WriterOptions::default())
        .expect("create corpus");
    let chunk = 4096u64;
    let mut start = 0;
    while start < args.rows {
        let end = (start + chunk).min(args.rows);
        let rows: Vec<_> = (start..end)
            .into_par_iter()
            .map(|r| synth::row(SEED, r, &eval))
            .collect();
        w.write(&record::records_to_batch(&rows).expect("batch"))
            .expect("write corpus");
        start = end;
    }
    let manifest = w.finish().expect("finish corpus");
    println!(
        "generated {} rows in {} shards, {:.2} GB on disk, in {:.1} s",
        manifest.rows(),
        manifest.shards.len(),
        dir_bytes(&corpus) as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
}

fn io(dir: &Path, input: &str, output: &str) -> PassIo {
    let mut io = PassIo::new(vec![dir.join(input)], dir.join(output));
    io.overwrite = true;
    io
}

fn report(name: &str, rows: u64, kept: u64, seconds: f64) {
    println!(
        "{name:<14} {rows:>9} rows in {seconds:>7.1} s  {:>9.0} rows/s  kept {kept:>9}",
        rows as f64 / seconds
    );
}

fn main() {
    let args = parse_args();
    fs::create_dir_all(&args.dir).expect("create bench dir");
    if args.generate_only {
        generate(&args);
        return;
    }
    println!(
        "corpus bench: {} rows in {} ({} rayon threads)",
        args.rows,
        args.dir.display(),
        rayon::current_num_threads()
    );
    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new(exe)
        .args(["--generate-only", "--rows", &args.rows.to_string(), "--dir"])
        .arg(&args.dir)
        .status()
        .expect("run generator");
    assert!(status.success(), "generation failed");

    let d = &args.dir;
    let chain = Instant::now();
    let s = verify::run(&io(d, "corpus", "verified"), &VerifyConfig::default()).expect("verify");
    report(
        "verify",
        s.counts.rows_in,
        s.counts.rows_out,
        s.counts.seconds,
    );
    let s = filter::run(&io(d, "verified", "filtered"), &FilterConfig::default()).expect("filter");
    report(
        "filter",
        s.counts.rows_in,
        s.counts.rows_out,
        s.counts.seconds,
    );
    let s = dedup::run(&io(d, "filtered", "deduped"), &DedupConfig::default()).expect("dedup");
    report(
        "dedup",
        s.counts.rows_in,
        s.counts.rows_out,
        s.counts.seconds,
    );
    let cfg = DecontaminateConfig {
        evals: vec![d.join("eval.jsonl")],
        ..DecontaminateConfig::default()
    };
    let s = decontaminate::run(&io(d, "deduped", "clean"), &cfg).expect("decontaminate");
    report(
        "decontaminate",
        s.counts.rows_in,
        s.counts.rows_out,
        s.counts.seconds,
    );
    let cfg = StatsConfig {
        dropped: ["filtered", "deduped", "clean"]
            .iter()
            .map(|p| d.join(p))
            .collect(),
        ..StatsConfig::default()
    };
    let st = stats::run(&io(d, "clean", "stats"), &cfg).expect("stats");
    report("stats", st.rows, st.rows, st.seconds);
    let total = chain.elapsed().as_secs_f64();
    println!(
        "chain total    {total:.1} s, peak RSS {:.0} MiB",
        peak_rss_mib()
    );
    let mut reasons: Vec<_> = st.dropped.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    println!("dropped: {reasons:?}");

    if !args.pandas {
        return;
    }
    let python = std::env::var("DISTILL_BENCH_PYTHON")
        .unwrap_or_else(|_| "/root/.cache/distill-venv-corpus/bin/python".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pandas_equivalent.py");
    let started = Instant::now();
    let out = Command::new(&python)
        .arg(&script)
        .arg("--dir")
        .arg(d)
        .status();
    let pandas = started.elapsed().as_secs_f64();
    match out {
        Ok(status) if status.success() => println!(
            "pandas chain   {pandas:.1} s → Rust is {:.1}x faster",
            pandas / total
        ),
        Ok(status) => println!("pandas chain failed ({status}) after {pandas:.1} s"),
        Err(e) => println!("cannot run `{python}`: {e}"),
    }
}
