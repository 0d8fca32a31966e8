//! Packing tokenized documents into padding-free training rows.
//!
//! Best-fit decreasing: documents are placed longest first, each into the open row whose free
//! space is the smallest that still holds it (a new row when none does). Equal lengths keep
//! input order, and among rows with the same free space the one that has had it longest wins, so
//! the result depends only on the length list and equals TRL's `bfd` packing of the same
//! documents (`trl.data_utils.pack_dataset`, which `distill train --engine trl` uses). Every
//! document keeps its own position ids starting at 0, which is how the model keeps attention
//! inside documents (see `distill_models::Model::forward_hidden`): packing changes no loss.

use std::collections::BTreeSet;

use crate::batch::{PackedRow, TeacherTargets, IGNORE};
use crate::{Error, Result};

/// One tokenized conversation: `labels[i]` is the target after position `i` (already shifted;
/// [`IGNORE`] on prompt positions and on the last position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// The teacher's stored distributions at positions of this document.
    pub teacher: Option<TeacherTargets>,
}

impl Document {
    /// A document from its tokens and a per-token "is trained" mask: the target after position
    /// `i` is token `i + 1` when that token is trained.
    pub fn from_mask(input_ids: Vec<u32>, trained: &[bool]) -> Self {
        let n = input_ids.len();
        let labels = (0..n)
            .map(|i| match trained.get(i + 1) {
                Some(true) => i64::from(input_ids[i + 1]),
                _ => IGNORE,
            })
            .collect();
        Self {
            input_ids,
            labels,
            teacher: None,
        }
    }

    /// A document whose tokens from `boundary` on are trained (the answer turn of a rendered
    /// conversation): the form the token cache stores, `(ids, boundary)`.
    pub fn from_boundary(input_ids: Vec<u32>, boundary: usize) -> Self {
        let mut labels = Vec::with_capacity(input_ids.len());
        push_labels(&input_ids, boundary, &mut labels);
        Self {
            input_ids,
            labels,
            teacher: None,
        }
    }

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

/// Appends the labels of a document whose tokens from `boundary` on are trained: the target
/// after position `i` is token `i + 1` when `i + 1 >= boundary`, [`IGNORE`] elsewhere and at the
/// last position (what [`Document::from_mask`] gives for that mask).
pub fn push_labels(ids: &[u32], boundary: usize, out: &mut Vec<i64>) {
    let n = ids.len();
    out.extend((0..n).map(|i| {
        if i + 1 < n && i + 1 >= boundary {
            i64::from(ids[i + 1])
        } else {
            IGNORE
        }
    }));
}

/// Label positions of a document of `len` tokens trained from `boundary` on (what
/// [`push_labels`] marks), without reading its tokens.
pub fn label_count(len: usize, boundary: usize) -> usize {
    len.saturating_sub(boundary.max(1))
}

/// Best-fit-decreasing bin packing of `lengths` into bins of `capacity`: returns the bins in
/// creation order, each listing document indices in the order they were placed.
pub fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Result<Vec<Vec<usize>>> {
    if capacity == 0 {
        return Err(Error::Config("`max_seq_len` must be at least 1".into()));
    }
    if let Some((i, &len)) = lengths.iter().enumerate().find(|(_, &l)| l > capacity) {
        return Err(Error::Batch(format!(
            "document {i} has `{len}` tokens, more than `max_seq_len` `{capacity}`"
        )));
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable sort: equal lengths keep input order.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // (free space, when the bin came to it, bin index): the first entry at or above a length is
    // the best fit, and among equally full bins the one that has been that full longest (TRL's
    // first-in-first-out queue per free space; a bin's creation order would differ from it when
    // a newer bin reaches a free space before an older one does).
    let mut by_space: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    for (placed, doc) in order.into_iter().enumerate() {
        let len = lengths[doc];
        let fit = by_space.range((len, 0, 0)..).next().copied();
        let bin = match fit {
            Some(entry) => {
                by_space.remove(&entry);
                entry.2
            }
            None => {
                bins.push(Vec::new());
                free.push(capacity);
                bins.len() - 1
            }
        };
        bins[bin].push(doc);
        free[bin] -= len;
        // A full bin can take nothing more (documents are never empty).
        if free[bin] > 0 {
            by_space.insert((free[bin], placed, bin));
        }
    }
    Ok(bins)
}

/// Concatenates documents into one row with per-document position ids.
pub fn concat(docs: &[&Document]) -> PackedRow {
    let total = docs.iter().map(|d| d.len()).sum();
    let mut row = PackedRow {
        input_ids: Vec::with_capacity(total),
        position_ids: Vec::with_capacity(total),
        labels: Vec::with_capacity(total),
        teacher: None,
    };
    for doc in docs {
        if let Some(t) = &doc.teacher {
            row.teacher
                .get_or_insert_with(|| TeacherTargets::new(t.k))
                .extend_shifted(t, row.input_ids.len() as u32);
        }
        row.input_ids.extend_from_slice(&doc.input_ids);
        row.position_ids.extend(0..doc.len() as u32);
        row.labels.extend_from_slice(&doc.labels);
    }
    row
}

/// Training rows from `docs`: packed best-fit-decreasing into rows of at most `max_seq_len`
/// tokens, or one document per row when `packing` is off. Empty documents are skipped.
pub fn pack(docs: &[Document], max_seq_len: usize, packing: bool) -> Result<Vec<PackedRow>> {
    let docs: Vec<&Document> = docs.iter().filter(|d| !d.is_empty()).collect();
    if let Some(doc) = docs.iter().find(|d| d.len() > max_seq_len) {
        return Err(Error::Batch(format!(
            "a document has `{}` tokens, more than `max_seq_len` `{max_seq_len}`",
            doc.len()
        )));
    }
    if !packing {
        return Ok(docs.iter().map(|d| concat(&[d])).collect());
    }
    let lengths: Vec<usize> = docs.iter().map(|d| d.len()).collect();
    let bins = best_fit_decreasing(&lengths, max_seq_len)?;
    Ok(bins
        .iter()
        .map(|bin| concat(&bin.iter().map(|&i| docs[i]).collect::<Vec<_>>()))
        .collect())
}

/// How full the rows are: real tokens over `rows × max_seq_len`.
pub fn fill_ratio(rows: &[PackedRow], max_seq_len: usize) -> f64 {
    fill_ratio_of(rows.iter().map(|r| r.len()).sum(), rows.len(), max_seq_len)
}

/// [`fill_ratio`] from counts: `tokens` real tokens in `rows` rows of `max_seq_len`.
pub fn fill_ratio_of(tokens: usize, rows: usize, max_seq_len: usize) -> f64 {
    if rows == 0 || max_seq_len == 0 {
        return 0.0;
    }
    tokens as f64 / (rows * max_seq_len) as f64
}
