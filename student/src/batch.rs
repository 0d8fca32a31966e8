//! The contract between the data pipeline and the trainer: one packed, padding-free row of
//! tokenized documents with its labels.

/// Label value for positions that contribute nothing to the loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// One training row: several documents packed end to end (no padding). `position_ids` restart
/// at 0 at each document start, which is what keeps attention inside documents (see
/// `distill_models::Model::forward`). `labels[i]` is the target for predicting position `i`
/// from positions `..=i`, i.e. already shifted by one, `IGNORE` where no loss applies (prompt
/// tokens, the last token of each document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    pub labels: Vec<i64>,
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
