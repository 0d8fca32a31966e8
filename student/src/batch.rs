//! The contract between the data pipeline and the trainer: one packed, padding-free row of
//! tokenized documents with its labels.

/// Label value for positions that contribute nothing to the loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// One training row: several documents packed end to end (no padding). `position_ids` restart
/// at 0 at each document start, which is what keeps attention inside documents (see
/// `distill_models::Model::forward`). `labels[i]` is the target for predicting position `i`
/// from positions `..=i`, i.e. already shifted by one, `IGNORE` where no loss applies (prompt
/// tokens, the last token of each document).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// The teacher's distributions stored in the corpus (`generate --logprobs`), for logit
    /// distillation without a live teacher; `None` when the row has none.
    pub teacher: Option<TeacherTargets>,
}

/// The teacher's top-`k` next-token distribution at some positions of a row or document:
/// position `positions[j]` predicts the token after it, and the teacher gave `ids[j k..(j+1) k]`
/// (most likely first) with log-probabilities `logprobs[j k..(j+1) k]` (float16 bits, as the
/// corpus stores them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TeacherTargets {
    pub k: usize,
    /// Ascending.
    pub positions: Vec<u32>,
    pub ids: Vec<u32>,
    pub logprobs: Vec<u16>,
}

impl TeacherTargets {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Appends `other`'s targets with their positions moved by `offset` (packing documents).
    pub fn extend_shifted(&mut self, other: &TeacherTargets, offset: u32) {
        self.positions
            .extend(other.positions.iter().map(|p| p + offset));
        self.ids.extend_from_slice(&other.ids);
        self.logprobs.extend_from_slice(&other.logprobs);
    }
}

impl PackedRow {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of positions that carry a label.
    pub fn label_count(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// Training rows the trainer draws from, by index: held in memory (`[PackedRow]`, `Vec`) or
/// streamed from a memory-mapped token cache ([`crate::data::token_cache::CachedRows`]), so a
/// corpus of any size trains with bounded memory.
pub trait Rows: Sync {
    /// Number of rows.
    fn count(&self) -> usize;

    /// Row `index` (`< count()`), materialised.
    fn row(&self, index: usize) -> PackedRow;

    /// Tokens of the longest row (what a micro-batch pads to).
    fn max_len(&self) -> usize;

    /// Row and token counts plus a hash of every id, position and label, in row order (see
    /// [`crate::trainer::fingerprint`]): what a resumed run checks the data against.
    fn fingerprint(&self) -> crate::checkpoint::DatasetFingerprint;

    /// Fails when the rows cannot be trained on (no rows, ragged rows, no label at all).
    fn check(&self) -> crate::Result<()>;
}

impl Rows for [PackedRow] {
    fn count(&self) -> usize {
        self.len()
    }

    fn row(&self, index: usize) -> PackedRow {
        self[index].clone()
    }

    fn max_len(&self) -> usize {
        self.iter().map(PackedRow::len).max().unwrap_or(0)
    }

    fn fingerprint(&self) -> crate::checkpoint::DatasetFingerprint {
        crate::trainer::fingerprint(self.iter())
    }

    fn check(&self) -> crate::Result<()> {
        use crate::Error;
        if self.is_empty() {
            return Err(Error::NoData("the training set has no rows".into()));
        }
        for (i, r) in self.iter().enumerate() {
            if r.is_empty() || r.position_ids.len() != r.len() || r.labels.len() != r.len() {
                return Err(Error::Batch(format!(
                    "row {i} has `{}` input ids, `{}` position ids and `{}` labels (must be equal and non-zero)",
                    r.len(),
                    r.position_ids.len(),
                    r.labels.len()
                )));
            }
        }
        if self.iter().all(|r| r.label_count() == 0) {
            return Err(Error::NoData("no training row has a label token".into()));
        }
        Ok(())
    }
}

impl Rows for Vec<PackedRow> {
    fn count(&self) -> usize {
        self.as_slice().count()
    }

    fn row(&self, index: usize) -> PackedRow {
        self.as_slice().row(index)
    }

    fn max_len(&self) -> usize {
        self.as_slice().max_len()
    }

    fn fingerprint(&self) -> crate::checkpoint::DatasetFingerprint {
        self.as_slice().fingerprint()
    }

    fn check(&self) -> crate::Result<()> {
        self.as_slice().check()
    }
}
