//! `decontaminate`: drops rows whose prompt shares a word n-gram (n = 8 by default, as
//! open-r1) with any problem of one or more evaluation sets.
//!
//! The evaluation sets are read with the problem loader (jsonl or parquet, GSM8K and MATH
//! layouts recognised), and only their n-gram hashes stay in memory. Evaluation problems with
//! fewer than n words cannot match and are counted in the summary.

use std::collections::HashMap;
use std::path::PathBuf;

use arrow_array::{Array, RecordBatch};
use serde::{Deserialize, Serialize};

use crate::pass::{par_rows, DropReason, PassCounts, PassIo, SplitWriter};
use crate::problems::{load_problems, ProblemSource};
use crate::record::Columns;
use crate::text::word_ngram_hashes;
use crate::{Error, Result};

/// Reason code written to `drop_reason`.
pub const CONTAMINATED: &str = "contaminated";

/// Options of `decontaminate`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct DecontaminateConfig {
    /// Evaluation set to protect (jsonl or parquet file or folder; `distill corpus
    /// decontaminate` also takes a hub dataset's file by name, `HuggingFaceH4/MATH-500`);
    /// repeat for several.
    #[arg(long = "eval", value_name = "PATH")]
    pub evals: Vec<PathBuf>,
    /// Words per n-gram.
    #[arg(long, default_value_t = 8)]
    pub ngram: usize,
    /// Corpus columns to check (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "prompt")]
    pub columns: Vec<String>,
}

impl Default for DecontaminateConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// What `decontaminate` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecontaminateSummary {
    #[serde(flatten)]
    pub counts: PassCounts,
    /// Problems read from the evaluation sets.
    pub eval_problems: u64,
    /// Evaluation problems too short to have an n-gram.
    pub eval_too_short: u64,
    /// Distinct n-grams indexed.
    pub eval_ngrams: u64,
    /// Dropped rows per evaluation file.
    pub hits_per_eval: HashMap<String, u64>,
}

/// Where an n-gram came from.
#[derive(Debug, Clone)]
struct Origin {
    file: u32,
    problem: String,
}

/// The n-grams of the evaluation sets.
pub struct EvalIndex {
    n: usize,
    files: Vec<String>,
    grams: HashMap<u64, Origin>,
    problems: u64,
    too_short: u64,
}

impl EvalIndex {
    /// Loads every evaluation set; fails before anything is written if one is missing.
    pub fn load(paths: &[PathBuf], n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::Invalid("`ngram` must be at least 1".into()));
        }
        if paths.is_empty() {
            return Err(Error::Invalid(
                "no evaluation set given (pass at least one `--eval PATH`)".into(),
            ));
        }
        let mut index = EvalIndex {
            n,
            files: Vec::new(),
            grams: HashMap::new(),
            problems: 0,
            too_short: 0,
        };
        for (file, path) in paths.iter().enumerate() {
            let problems = load_problems(&ProblemSource {
                path: path.clone(),
                ..Default::default()
            })?;
            index.files.push(path.display().to_string());
            for p in problems {
                index.problems += 1;
                let grams = word_ngram_hashes(&p.prompt, n);
                if grams.is_empty() {
                    index.too_short += 1;
                }
                for g in grams {
                    index.grams.entry(g).or_insert_with(|| Origin {
                        file: file as u32,
                        problem: p.id.clone(),
                    });
                }
            }
        }
        Ok(index)
    }

    /// The first evaluation problem `text` shares an n-gram with: `(file, problem id)`.
    pub fn find(&self, text: &str) -> Option<(&str, &str)> {
        word_ngram_hashes(text, self.n)
            .iter()
            .find_map(|g| self.grams.get(g))
            .map(|o| (self.files[o.file as usize].as_str(), o.problem.as_str()))
    }
}

/// Runs `decontaminate` over `io.inputs` into `io.output`.
pub fn run(io: &PassIo, cfg: &DecontaminateConfig) -> Result<DecontaminateSummary> {
    let index = EvalIndex::load(&cfg.evals, cfg.ngram)?;
    let reader = io.reader()?;
    let columns: Vec<&str> = cfg.columns.iter().map(String::as_str).collect();
    if columns.is_empty() {
        return Err(Error::Invalid("no corpus column to check".into()));
    }
    reader.require(&columns)?;
    let mut out = SplitWriter::new(io, reader.schema().clone(), reader.schema())?;
    let mut hits: HashMap<String, u64> = HashMap::new();
    for batch in reader.batches() {
        let batch = batch?;
        let verdicts = check_batch(&batch, &columns, &index)?;
        for (file, _) in verdicts.iter().flatten() {
            *hits.entry(file.clone()).or_default() += 1;
        }
        let verdicts: Vec<Option<DropReason>> = verdicts
            .into_iter()
            .map(|v| v.map(|(_, reason)| reason))
            .collect();
        out.write(&batch, &batch, &verdicts)?;
    }
    out.finish(cfg, |counts| DecontaminateSummary {
        counts,
        eval_problems: index.problems,
        eval_too_short: index.too_short,
        eval_ngrams: index.grams.len() as u64,
        hits_per_eval: hits,
    })
}

fn check_batch(
    batch: &RecordBatch,
    columns: &[&str],
    index: &EvalIndex,
) -> Result<Vec<Option<(String, DropReason)>>> {
    let c = Columns::new(batch);
    let arrays = columns
        .iter()
        .map(|name| c.str(name))
        .collect::<Result<Vec<_>>>()?;
    Ok(par_rows(batch.num_rows(), |i| {
        arrays.iter().zip(columns).find_map(|(array, name)| {
            if array.is_null(i) {
                return None;
            }
            index.find(array.value(i)).map(|(file, problem)| {
                let detail = format!(
                    "`{name}` shares a {}-gram with `{problem}` of `{file}`",
                    index.n
                );
                (
                    file.to_string(),
                    DropReason::with_detail(CONTAMINATED, detail),
                )
            })
        })
    }))
}
