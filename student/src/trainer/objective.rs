//! The objective of one micro-batch: the chunked cross-entropy of its labelled positions and,
//! when distilling, the teacher's divergence at the same positions (from a live teacher's
//! logits or the corpus's stored top-k), mixed by `kd.weight`. The SFT and on-policy loops both
//! differentiate what this returns.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use distill_models::recompute::RecomputeGrads;
use distill_models::Model;

use crate::batch::{PackedRow, IGNORE};
use crate::kd::{live_divergence_sum, stored_divergence_sum, KdConfig, Teacher};
use crate::loss::{chunked_cross_entropy, cross_entropy_reference, label_targets};
use crate::{Error, Result};

/// The divergence term of a step: the config and its teacher, or an error when the config asks
/// for distillation and no teacher was given.
pub(super) fn kd_term<'a>(
    kd: &'a Option<KdConfig>,
    teacher: &'a Option<Teacher>,
) -> Result<Option<(&'a KdConfig, Option<&'a Teacher>)>> {
    match (kd, teacher) {
        (None, _) => Ok(None),
        // Stored distributions: the corpus's, or an endpoint's scores attached to each sample.
        (Some(kd), _) if kd.from_corpus || kd.is_endpoint() => Ok(Some((kd, None))),
        (Some(kd), Some(t)) => Ok(Some((kd, Some(t)))),
        (Some(kd), None) => Err(Error::Config(format!(
            "the training config distils from `{}` but no teacher was loaded",
            kd.teacher
        ))),
    }
}

/// What one micro-batch contributes to a step.
pub(super) struct MicroBatchLoss {
    /// The scaled loss to differentiate: `scale` × Σ token losses, the cross-entropy and
    /// divergence mixed by `kd.weight` when distilling.
    pub(super) objective: Tensor,
    /// `scale` × Σ token cross-entropies.
    pub(super) cross_entropy: f64,
    /// `scale` × Σ token divergences, when distilling.
    pub(super) divergence: Option<f64>,
    /// Real (unpadded) tokens.
    pub(super) tokens: usize,
}

/// The loss of one micro-batch, with a teacher's divergence term when `kd` is given; with
/// `recompute`, the student's layers are recomputed in backward (activation checkpointing).
pub(super) fn micro_batch_loss(
    model: &Model,
    rows: &[&PackedRow],
    scale: f64,
    chunk: usize,
    kd: Option<(&KdConfig, Option<&Teacher>)>,
    recompute: Option<&Arc<RecomputeGrads>>,
) -> Result<MicroBatchLoss> {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if width == 0 {
        return Err(Error::Batch("a micro-batch has no tokens".into()));
    }
    let (mut ids, mut pos, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = 0;
    for r in rows {
        tokens += r.len();
        ids.extend_from_slice(&r.input_ids);
        pos.extend_from_slice(&r.position_ids);
        labels.extend_from_slice(&r.labels);
        let last = r.position_ids.last().copied().unwrap_or(0);
        for k in 1..=(width - r.len()) as u32 {
            ids.push(0);
            pos.push(last + k);
            labels.push(IGNORE);
        }
    }
    let dev = model.device();
    let b = rows.len();
    let spec = model.spec();
    let (positions, targets) = label_targets(&labels, spec.vocab_size)?;
    // Ids and positions go up from the host once; nothing in the forward reads back.
    let all_hidden = model
        .forward_hidden_recomputing(&ids, &pos, b, recompute)?
        .reshape((b * width, spec.hidden_size))?;
    let hidden = if positions.len() == b * width {
        all_hidden.clone()
    } else {
        all_hidden.index_select(&Tensor::new(positions.as_slice(), dev)?, 0)?
    };
    let head = model.lm_head().weight().ok_or_else(|| {
        Error::Config("the model's head is quantized; training needs float weights".into())
    })?;
    let loss = if chunk == 0 {
        cross_entropy_reference(&hidden.matmul(&head.t()?)?, &targets, scale)?
    } else {
        chunked_cross_entropy(&hidden, head, &targets, scale, chunk)?
    };
    let cross_entropy = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let Some((config, teacher)) = kd else {
        return Ok(MicroBatchLoss {
            objective: loss,
            cross_entropy,
            divergence: None,
            tokens,
        });
    };
    let step = if chunk == 0 { usize::MAX } else { chunk };
    // Summed divergences of runs of `step` positions.
    let mut sums = Vec::new();
    match teacher {
        // The teacher's whole distribution at each labelled position, `chunk` positions at a
        // time from the hidden states; the student's in full, or at the teacher's top k only.
        Some(teacher) => {
            let teacher_hidden = teacher.hidden_at(&ids, &pos, b, &positions)?;
            for start in (0..positions.len()).step_by(step) {
                let n = step.min(positions.len() - start);
                let teacher_logits = teacher.logits(&teacher_hidden.narrow(0, start, n)?)?;
                sums.push(live_divergence_sum(
                    config,
                    &hidden.narrow(0, start, n)?,
                    head,
                    &teacher_logits,
                )?);
            }
        }
        // The stored targets of each row, at their positions in the padded grid.
        None => {
            let (mut at, mut k, mut target_ids, mut target_lps) = (vec![], 0, vec![], vec![]);
            for (r, row) in rows.iter().enumerate() {
                let Some(t) = &row.teacher else { continue };
                if k != 0 && t.k != k {
                    return Err(Error::Batch(format!(
                        "rows store {k} and {} teacher alternatives per token",
                        t.k
                    )));
                }
                k = t.k;
                at.extend(t.positions.iter().map(|&p| (r * width) as u32 + p));
                target_ids.extend_from_slice(&t.ids);
                target_lps.extend_from_slice(&t.logprobs);
            }
            for start in (0..at.len()).step_by(step) {
                let n = step.min(at.len() - start);
                let index = Tensor::new(&at[start..start + n], dev)?;
                sums.push(stored_divergence_sum(
                    config,
                    &all_hidden.index_select(&index, 0)?,
                    head,
                    k,
                    &target_ids[start * k..(start + n) * k],
                    &target_lps[start * k..(start + n) * k],
                )?);
            }
        }
    }
    let divergence = if sums.is_empty() {
        loss.zeros_like()?
    } else {
        (Tensor::stack(&sums, 0)?.sum_all()? * scale)?
    };
    let divergence_value = divergence.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let objective = ((loss.to_dtype(DType::F32)? * (1.0 - config.weight))?
        + (divergence.to_dtype(DType::F32)? * config.weight)?)?;
    Ok(MicroBatchLoss {
        objective,
        cross_entropy,
        divergence: Some(divergence_value),
        tokens,
    })
}
