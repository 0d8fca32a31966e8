//! `dedup`: drops exact duplicates (same normalized prompt, reasoning and completion) and every
//! row of a problem whose prompt nearly duplicates an earlier problem's (MinHash over word
//! shingles, banded LSH for candidates, the signature estimate of Jaccard to confirm).
//!
//! The first occurrence wins, so the result does not depend on batch size. Memory holds one
//! 128-bit key per kept row and one signature per kept problem, never the text.

use std::collections::HashMap;

use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};
use twox_hash::{XxHash3_128, XxHash3_64};

use crate::pass::{par_rows, DropReason, PassCounts, PassIo, SplitWriter};
use crate::record::{col, Columns};
use crate::text::{normalized_words, write_normalized};
use crate::{Error, Result};

/// Reason codes written to `drop_reason`.
pub mod reason {
    pub const DUPLICATE: &str = "duplicate";
    pub const NEAR_DUPLICATE_PROMPT: &str = "near_duplicate_prompt";
}

/// Options of `dedup`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct DedupConfig {
    /// Skip exact deduplication of whole samples.
    #[arg(long)]
    pub no_exact: bool,
    /// Skip near-duplicate detection of prompts.
    #[arg(long)]
    pub no_near: bool,
    /// Estimated Jaccard similarity of word shingles at or above which two prompts of
    /// different problems are near duplicates.
    #[arg(long, default_value_t = 0.8)]
    pub near_threshold: f64,
    /// Words per shingle.
    #[arg(long, default_value_t = 3)]
    pub shingle_words: usize,
    /// MinHash permutations (signature length).
    #[arg(long, default_value_t = 64)]
    pub num_perm: usize,
    /// LSH bands (`num_perm` must be a multiple); more bands find less similar candidates.
    #[arg(long, default_value_t = 16)]
    pub bands: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// What `dedup` dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DedupSummary {
    #[serde(flatten)]
    pub counts: PassCounts,
    /// Distinct problems seen.
    pub problems: u64,
    /// Problems dropped as near duplicates of earlier ones.
    pub near_duplicate_problems: u64,
}

/// Columns `dedup` reads.
pub const REQUIRED: [&str; 5] = [
    col::ID,
    col::PROBLEM_ID,
    col::PROMPT,
    col::REASONING,
    col::COMPLETION,
];

/// MinHash signatures of word-shingle sets.
#[derive(Debug, Clone)]
pub struct MinHasher {
    shingle_words: usize,
    mults: Vec<u64>,
    adds: Vec<u64>,
}

impl MinHasher {
    pub fn new(num_perm: usize, shingle_words: usize) -> Self {
        // Fixed seeds: signatures must not change between runs.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mults = (0..num_perm).map(|_| next() | 1).collect();
        let adds = (0..num_perm).map(|_| next()).collect();
        MinHasher {
            shingle_words: shingle_words.max(1),
            mults,
            adds,
        }
    }

    /// Hashes of the text's word shingles (the whole text as one shingle when it is shorter).
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        let words: Vec<u64> = normalized_words(text)
            .map(|w| XxHash3_64::oneshot(w.as_bytes()))
            .collect();
        let n = self.shingle_words.min(words.len()).max(1);
        let mut out: Vec<u64> = words
            .windows(n)
            .map(|w| w.iter().fold(0u64, |h, &x| h.rotate_left(21) ^ x))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn signature(&self, text: &str) -> Vec<u32> {
        let shingles = self.shingles(text);
        self.mults
            .iter()
            .zip(&self.adds)
            .map(|(&a, &b)| {
                shingles
                    .iter()
                    .map(|&x| (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32)
                    .min()
                    .unwrap_or(u32::MAX)
            })
            .collect()
    }
}

/// Estimated Jaccard similarity: the fraction of equal signature slots.
pub fn estimate_jaccard(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

/// An LSH index over signatures: candidates share at least one band.
#[derive(Debug)]
pub struct LshIndex {
    bands: usize,
    rows: usize,
    threshold: f64,
    /// Band key → most recent entry with it; `chain` links to the previous one.
    heads: HashMap<u64, u32>,
    chain: Vec<u32>,
    signatures: Vec<Vec<u32>>,
}

const NONE: u32 = u32::MAX;
/// Entries compared per bucket and band at most (bounds the cost of crowded buckets).
const MAX_BUCKET_CHECKS: usize = 32;

impl LshIndex {
    pub fn new(num_perm: usize, bands: usize, threshold: f64) -> Result<Self> {
        if bands == 0 || num_perm == 0 || !num_perm.is_multiple_of(bands) {
            return Err(Error::Invalid(format!(
                "`num_perm` ({num_perm}) must be a positive multiple of `bands` ({bands})"
            )));
        }
        Ok(LshIndex {
            bands,
            rows: num_perm / bands,
            threshold,
            heads: HashMap::new(),
            chain: Vec::new(),
            signatures: Vec::new(),
        })
    }

    fn band_key(&self, sig: &[u32], band: usize) -> u64 {
        let part = &sig[band * self.rows..(band + 1) * self.rows];
        let mut bytes = Vec::with_capacity(4 * part.len() + 8);
        bytes.extend_from_slice(&(band as u64).to_le_bytes());
        for v in part {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        XxHash3_64::oneshot(&bytes)
    }

    /// The most similar indexed entry at or above the threshold: `(entry, similarity)`.
    pub fn query(&self, sig: &[u32]) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for band in 0..self.bands {
            let mut at = self
                .heads
                .get(&self.band_key(sig, band))
                .copied()
                .unwrap_or(NONE);
            // Templated prompts share whole bands, making some buckets huge; the most recent
            // entries suffice, as a true near duplicate also shares its other bands.
            let mut checked = 0;
            while at != NONE && checked < MAX_BUCKET_CHECKS {
                checked += 1;
                let entry = at as usize;
                let sim = estimate_jaccard(sig, &self.signatures[entry]);
                if sim >= self.threshold && best.is_none_or(|(_, s)| sim > s) {
                    best = Some((entry, sim));
                }
                at = self.chain[entry * self.bands + band];
            }
        }
        best
    }

    /// Adds a signature; returns its entry number.
    pub fn insert(&mut self, sig: Vec<u32>) -> usize {
        let entry = self.signatures.len();
        for band in 0..self.bands {
            let key = self.band_key(&sig, band);
            let prev = self.heads.insert(key, entry as u32).unwrap_or(NONE);
            self.chain.push(prev);
        }
        self.signatures.push(sig);
        entry
    }
}

enum ProblemState {
    Kept,
    NearDuplicate { of: String, similarity: f64 },
}

/// Runs `dedup` over `io.inputs` into `io.output`.
pub fn run(io: &PassIo, cfg: &DedupConfig) -> Result<DedupSummary> {
    if !(0.0..=1.0).contains(&cfg.near_threshold) {
        return Err(Error::Invalid(format!(
            "`near_threshold` {} is not in [0, 1]",
            cfg.near_threshold
        )));
    }
    let hasher = MinHasher::new(cfg.num_perm, cfg.shingle_words);
    let mut index = LshIndex::new(cfg.num_perm, cfg.bands, cfg.near_threshold)?;
    let reader = io.reader()?;
    reader.require(&REQUIRED)?;
    let mut out = SplitWriter::new(io, reader.schema().clone(), reader.schema())?;
    let mut problems: HashMap<u64, ProblemState> = HashMap::new();
    // Problem ids of the index entries, for the drop detail.
    let mut entry_ids: Vec<String> = Vec::new();
    let mut seen: HashMap<u128, Box<str>> = HashMap::new();
    let mut near_problems = 0u64;
    for batch in reader.batches() {
        let batch = batch?;
        let keys = row_keys(&batch, cfg, &hasher)?;
        let c = Columns::new(&batch);
        let (ids, problem_ids) = (c.str(col::ID)?, c.str(col::PROBLEM_ID)?);
        let mut verdicts = Vec::with_capacity(batch.num_rows());
        for (i, (exact, signature)) in keys.into_iter().enumerate() {
            let problem = problem_ids.value(i);
            let pkey = XxHash3_64::oneshot(problem.as_bytes());
            let state = problems.entry(pkey).or_insert_with(|| {
                let Some(sig) = signature else {
                    return ProblemState::Kept;
                };
                match index.query(&sig) {
                    Some((entry, similarity)) => {
                        near_problems += 1;
                        ProblemState::NearDuplicate {
                            of: entry_ids[entry].clone(),
                            similarity,
                        }
                    }
                    None => {
                        index.insert(sig);
                        entry_ids.push(problem.to_string());
                        ProblemState::Kept
                    }
                }
            });
            let verdict = match state {
                ProblemState::NearDuplicate { of, similarity } => Some(DropReason::with_detail(
                    reason::NEAR_DUPLICATE_PROMPT,
                    format!("prompt ~{similarity:.2} similar to problem `{of}`"),
                )),
                ProblemState::Kept => match exact {
                    Some(key) => match seen.get(&key) {
                        Some(first) => Some(DropReason::with_detail(
                            reason::DUPLICATE,
                            format!("same text as `{first}`"),
                        )),
                        None => {
                            seen.insert(key, ids.value(i).into());
                            None
                        }
                    },
                    None => None,
                },
            };
            verdicts.push(verdict);
        }
        out.write(&batch, &batch, &verdicts)?;
    }
    let problems_seen = problems.len() as u64;
    out.finish(cfg, |counts| DedupSummary {
        counts,
        problems: problems_seen,
        near_duplicate_problems: near_problems,
    })
}

type RowKey = (Option<u128>, Option<Vec<u32>>);

/// Per row, in parallel: the exact-text key and the prompt's MinHash signature.
fn row_keys(batch: &RecordBatch, cfg: &DedupConfig, hasher: &MinHasher) -> Result<Vec<RowKey>> {
    let c = Columns::new(batch);
    let (prompt, reasoning, completion) = (
        c.str(col::PROMPT)?,
        c.str(col::REASONING)?,
        c.str(col::COMPLETION)?,
    );
    Ok(par_rows(batch.num_rows(), |i| {
        let exact = (!cfg.no_exact).then(|| {
            let mut buf = String::with_capacity(
                prompt.value(i).len() + reasoning.value(i).len() + completion.value(i).len() + 2,
            );
            for part in [prompt.value(i), reasoning.value(i), completion.value(i)] {
                write_normalized(part, &mut buf);
                buf.push('\u{1f}');
            }
            XxHash3_128::oneshot(buf.as_bytes())
        });
        let signature = (!cfg.no_near).then(|| hasher.signature(prompt.value(i)));
        (exact, signature)
    }))
}
