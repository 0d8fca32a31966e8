//! `distill corpus …`: command-line front end of the corpus crate. Each command runs one pass
//! of `distill_corpus` and prints its summary on one screen; options and their defaults live in
//! the library's config structs (clap `Args` + serde), flattened here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use distill_corpus::decontaminate::{self, DecontaminateConfig};
use distill_corpus::dedup::{self, DedupConfig};
use distill_corpus::export::{self, ExportConfig};
use distill_corpus::filter::{self, FilterConfig};
use distill_corpus::import::{self, ImportConfig, ImportIo};
use distill_corpus::pass::{PassCounts, PassIo};
use distill_corpus::split::{self, SplitConfig};
use distill_corpus::stats::{self, LengthStats, StatsConfig};
use distill_corpus::verify::{self, VerifyConfig};

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Read another tool's reasoning corpus (jsonl, json or parquet: `messages`, ShareGPT
    /// `conversations`, or prompt and response columns) as corpus shards the passes below take.
    Import(ImportArgs),
    /// Extract each row's final answer and judge it against the reference (fills
    /// `final_answer` and `correct`).
    Verify(PassArgs<VerifyConfig>),
    /// Rejection sampling and readability filters; dropped rows go to `OUTPUT/dropped/`.
    Filter(PassArgs<FilterConfig>),
    /// Drop exact duplicate samples and problems whose prompt nearly duplicates another's.
    Dedup(PassArgs<DedupConfig>),
    /// Drop rows sharing a word n-gram with an evaluation set (`--eval PATH`, repeatable).
    Decontaminate(PassArgs<DecontaminateConfig>),
    /// Split into `OUTPUT/train` and `OUTPUT/eval` by a hash of the problem id.
    Split(PassArgs<SplitConfig>),
    /// Counts, pass rates, lengths and drop reasons; writes `stats.json` and PNG charts.
    Stats(PassArgs<StatsConfig>),
    /// Write a training file (jsonl or parquet) with a TRL / open-r1 `messages` column.
    Export(PassArgs<ExportConfig>),
}

/// `corpus import`'s inputs, output and options.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub io: ImportIo,
    #[command(flatten)]
    pub config: ImportConfig,
    /// Count `prompt_tokens` and `completion_tokens` with this model's tokenizer (a checkpoint
    /// folder, a GGUF file or a hub id; the student's, so `filter --max-tokens` and `stats`
    /// speak its tokens) [default: not counted, left 0].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// Inputs, output and the options of one pass.
#[derive(Debug, Args)]
pub struct PassArgs<C: Args> {
    #[command(flatten)]
    pub io: PassIo,
    #[command(flatten)]
    pub config: C,
}

pub fn run(cmd: CorpusCommand) -> anyhow::Result<()> {
    match cmd {
        CorpusCommand::Import(a) => run_import(&a)?,
        CorpusCommand::Verify(a) => {
            let s = verify::run(&a.io, &a.config)?;
            print_counts("verify", &s.counts);
            println!(
                "  correct {} · incorrect {} · no reference {} · no answer extracted {}",
                s.correct, s.incorrect, s.no_reference, s.no_answer
            );
            warn_if_all_dropped("verify", &s.counts);
        }
        CorpusCommand::Filter(a) => {
            let s = filter::run(&a.io, &a.config)?;
            print_counts("filter", &s.counts);
            println!("  problems with kept rows: {}", s.problems_kept);
            warn_if_all_dropped("filter", &s.counts);
        }
        CorpusCommand::Dedup(a) => {
            let s = dedup::run(&a.io, &a.config)?;
            print_counts("dedup", &s.counts);
            println!(
                "  problems: {} · near-duplicate problems: {}",
                s.problems, s.near_duplicate_problems
            );
            warn_if_all_dropped("dedup", &s.counts);
        }
        CorpusCommand::Decontaminate(mut a) => {
            for eval in &mut a.config.evals {
                *eval = crate::model_arg::resolve_problem_file(eval)?;
            }
            let s = decontaminate::run(&a.io, &a.config)?;
            print_counts("decontaminate", &s.counts);
            println!(
                "  evaluation problems: {} ({} too short for {}-grams) · n-grams: {}",
                s.eval_problems, s.eval_too_short, a.config.ngram, s.eval_ngrams
            );
            let hits: BTreeMap<_, _> = s.hits_per_eval.iter().collect();
            for (file, n) in hits {
                println!("  {n:>10} rows overlap {file}");
            }
            warn_if_all_dropped("decontaminate", &s.counts);
        }
        CorpusCommand::Split(a) => {
            let s = split::run(&a.io, &a.config)?;
            println!(
                "split: {} rows in {:.1} s → {}",
                s.rows_in,
                s.seconds,
                s.output.display()
            );
            println!(
                "  train: {:>10} rows, {:>8} problems",
                s.train_rows, s.train_problems
            );
            println!(
                "  eval:  {:>10} rows, {:>8} problems",
                s.eval_rows, s.eval_problems
            );
        }
        CorpusCommand::Stats(a) => {
            let s = stats::run(&a.io, &a.config)?;
            print_stats(&s);
        }
        CorpusCommand::Export(a) => {
            let s = export::run(&a.io, &a.config)?;
            println!(
                "export: {} rows ({} with rebuilt messages) as {:?}, {:.1} MB in {:.1} s → {}",
                s.rows,
                s.rebuilt,
                s.format,
                s.bytes as f64 / 1e6,
                s.seconds,
                s.output.display()
            );
        }
    }
    Ok(())
}

fn run_import(a: &ImportArgs) -> anyhow::Result<()> {
    // The tokenizer loads first: a wrong path fails before the dataset is read.
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(crate::model_arg::open_tokenizer)
        .transpose()?;
    // An output in the way fails before a dataset is downloaded (the import checks it again).
    if a.io.output.exists() && !a.io.overwrite {
        return Err(distill_corpus::Error::OutputExists {
            path: a.io.output.clone(),
        }
        .into());
    }
    // Inputs that are no local path but name a hub dataset are fetched into the cache first.
    let mut io = a.io.clone();
    io.inputs.clear();
    for input in &a.io.inputs {
        let Some(dataset) = crate::model_arg::dataset_ref(input) else {
            io.inputs.push(input.clone());
            continue;
        };
        let found =
            crate::model_arg::resolve_dataset(&dataset, distill_models::hub::DataFiles::All)?;
        println!(
            "dataset `{dataset}` at commit {}: {} file{}",
            &found.snapshot.commit[..found.snapshot.commit.len().min(12)],
            found.files.len(),
            crate::plural(found.files.len() as u64)
        );
        for file in found.files {
            io.names.insert(file.clone(), dataset.repo.repo.clone());
            io.inputs.push(file);
        }
    }
    let count = tokenizer
        .as_ref()
        .map(|t| move |text: &str| t.encode(text, false).map_or(0, |ids| ids.len()));
    let counter = count.as_ref().map(|c| c as &import::TokenCounter<'_>);
    // The bar appears with the first batch, when the files have said whether they count rows.
    let mut bar: Option<crate::progress::Progress> = None;
    let s = import::run(&io, &a.config, counter, &mut |p| {
        let bar = bar.get_or_insert_with(|| {
            let template = match p.total_rows {
                Some(_) => {
                    "{prefix} {bar:30} {pos}/{len} rows · {msg} · {elapsed_precise} (ETA {eta})"
                }
                None => "{prefix} {pos} rows · {msg} · {elapsed_precise}",
            };
            let bar =
                crate::progress::Progress::new(p.total_rows.unwrap_or(0), template, "rows", true);
            bar.set_prefix("import");
            bar
        });
        bar.set_position(p.rows_read);
        bar.set_message(format!("{} samples", p.samples));
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let s = s?;
    println!(
        "import: {} rows from {} file{}, {} samples of {} problems in {:.1} s ({}) → {}",
        s.rows_read,
        s.files.len(),
        crate::plural(s.files.len() as u64),
        s.samples,
        s.problems,
        s.seconds,
        rate(s.rows_read, s.seconds),
        s.output.display()
    );
    let m = &s.mapping;
    let columns: Vec<String> = [
        ("conversation", &m.conversation),
        ("system", &m.system),
        ("prompt", &m.prompt),
        ("response", &m.response),
        ("reasoning", &m.reasoning),
        ("answer", &m.answer),
        ("id", &m.id),
        ("source", &m.source),
        ("finish", &m.finish),
    ]
    .into_iter()
    .filter_map(|(part, c)| c.as_ref().map(|c| format!("{part} `{c}`")))
    .collect();
    let layout = format!("{:?}", m.layout).to_lowercase();
    println!("  layout {layout}: {}", columns.join(" · "));
    let t = &s.think;
    println!(
        "  reasoning marked by <think> {} · Sky-T1 tags {} · a field of its own {} · not marked {} · never closed {}",
        t.r1, t.sky_t1, t.field, t.none, t.unclosed
    );
    println!(
        "  with a reference answer: {} of {} samples{}",
        s.with_reference,
        s.samples,
        if s.with_reference == 0 {
            " (`verify` needs one: `--answer-column`)"
        } else {
            ""
        }
    );
    if !s.skipped.is_empty() {
        println!("  responses without a sample: {}", s.skipped_total());
        for (reason, n) in by_count(&s.skipped) {
            println!(
                "  {reason:<24} {n:>10}  (first: {})",
                s.first_skipped[reason]
            );
        }
    }
    if !s.token_counts {
        println!(
            "  token counts: not counted (0); `--tokenizer MODEL` counts them for `stats` and `filter --min-tokens/--max-tokens`"
        );
    }
    if s.rows_read > 0 && s.samples == 0 {
        eprintln!(
            "warning: `import` found no sample in {} rows: check `--layout` and the columns above",
            s.rows_read
        );
    }
    Ok(())
}

fn rate(rows: u64, seconds: f64) -> String {
    if seconds > 0.0 {
        format!("{:.0} rows/s", rows as f64 / seconds)
    } else {
        "-".into()
    }
}

fn print_counts(pass: &str, c: &PassCounts) {
    println!(
        "{pass}: {} rows in, {} kept, {} dropped in {:.1} s ({}) → {}",
        c.rows_in,
        c.rows_out,
        c.dropped_total(),
        c.seconds,
        rate(c.rows_in, c.seconds),
        c.output.display()
    );
    print_reasons(&c.dropped, c.rows_in);
}

/// After a pass's report: a pass that dropped every row is said on stderr with its reasons, the
/// line a user looks for when a later `train` finds no data.
fn warn_if_all_dropped(pass: &str, c: &PassCounts) {
    if c.rows_in > 0 && c.rows_out == 0 {
        let reasons: Vec<String> = by_count(&c.dropped)
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        eprintln!(
            "warning: `{pass}` kept none of the {} rows ({}): nothing is left to train on",
            c.rows_in,
            reasons.join(", ")
        );
    }
}

/// Drop reasons, the most frequent first (ties by name).
fn by_count(dropped: &BTreeMap<String, u64>) -> Vec<(&String, &u64)> {
    let mut reasons: Vec<_> = dropped.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    reasons
}

fn print_reasons(dropped: &BTreeMap<String, u64>, total: u64) {
    for (reason, n) in by_count(dropped) {
        let share = if total > 0 {
            100.0 * *n as f64 / total as f64
        } else {
            0.0
        };
        println!("  {reason:<24} {n:>10}  ({share:.1}%)");
    }
}

fn print_lengths(name: &str, l: &LengthStats) {
    println!(
        "  {name:<18} min {:>7}  median {:>7}  mean {:>9.1}  p90 {:>7}  p99 {:>7}  max {:>7}",
        l.min, l.median, l.mean, l.p90, l.p99, l.max
    );
}

fn print_stats(s: &stats::StatsSummary) {
    println!(
        "stats: {} rows, {} problems in {:.1} s → {}",
        s.rows,
        s.problems,
        s.seconds,
        s.output.display()
    );
    println!(
        "  correct {} · incorrect {} · unverified {}",
        s.correct, s.incorrect, s.unverified
    );
    println!(
        "  {:<24} {:>10} {:>10} {:>10}",
        "source", "rows", "verified", "pass rate"
    );
    for (name, src) in &s.sources {
        let pass = src
            .pass_rate
            .map(|p| format!("{:.1}%", 100.0 * p))
            .unwrap_or_else(|| "-".into());
        println!(
            "  {name:<24} {:>10} {:>10} {pass:>10}",
            src.rows, src.verified
        );
    }
    let finish: Vec<String> = s
        .finish_reasons
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  finish reasons: {}", finish.join(" · "));
    print_lengths("reasoning chars", &s.reasoning_chars);
    print_lengths("completion chars", &s.completion_chars);
    print_lengths("completion tokens", &s.completion_tokens);
    if !s.dropped.is_empty() {
        println!("  dropped by earlier passes: {}", s.dropped_total());
        print_reasons(&s.dropped, s.rows + s.dropped_total());
    }
    for chart in &s.charts {
        println!("  chart: {}", chart.display());
    }
}
