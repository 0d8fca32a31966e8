//! Logit distillation: the divergence between the teacher's and the student's next-token
//! distributions at each position, as TRL's GKD trainer (`generalized_jsd_loss`) defines it, so
//! a recipe tuned there means the same here.
//!
//! `beta` picks the divergence: 0 is the forward KL(teacher ‖ student) (classic KD: the student
//! covers every mode of the teacher), 1 the reverse KL(student ‖ teacher) (mode seeking: what
//! on-policy distillation minimises on the student's own samples), and a value between is the
//! generalised Jensen-Shannon divergence β·KL(teacher ‖ M) + (1 − β)·KL(student ‖ M) with the
//! mixture M = β·teacher + (1 − β)·student. Both distributions are taken at `temperature`
//! (logits ÷ T) and, as in TRL, the result is not multiplied by T². The loss is the mean over
//! positions of the per-position divergence; it is differentiable in the student's logits (the
//! teacher's are constants). Checked against PyTorch on fixed logits, gradients included
//! (`tests/fixtures/make_kd_losses.py`).

use candle_core::{Tensor, D};
use candle_nn::ops::log_softmax;

use crate::{Error, Result};

/// The divergence and its temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// 0: forward KL, 1: reverse KL, between: generalised JSD (TRL's `beta`).
    pub beta: f64,
    /// Both distributions are softmax(logits / temperature).
    pub temperature: f64,
}

impl Divergence {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(Error::Config(format!(
                "the divergence's `beta` must be in [0, 1], got `{}`",
                self.beta
            )));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "the divergence's `temperature` must be positive, got `{}`",
                self.temperature
            )));
        }
        Ok(())
    }

    /// Mean over positions of the divergence between `student_logits` and `teacher_logits`,
    /// both `[positions, vocab]`.
    pub fn loss(&self, student_logits: &Tensor, teacher_logits: &Tensor) -> Result<Tensor> {
        self.validate()?;
        let (positions, vocab) = student_logits.dims2()?;
        if teacher_logits.dims() != [positions, vocab] {
            return Err(Error::Batch(format!(
                "teacher logits {:?} and student logits {:?} differ in shape",
                teacher_logits.dims(),
                student_logits.dims()
            )));
        }
        let scale = 1.0 / self.temperature;
        let s = log_softmax(&(student_logits * scale)?, D::Minus1)?;
        let t = log_softmax(&(teacher_logits.detach() * scale)?, D::Minus1)?;
        let per_token = if self.beta == 0.0 {
            kl(&t, &s)?
        } else if self.beta == 1.0 {
            kl(&s, &t)?
        } else {
            // log M = logsumexp(log(1 − β) + s, log β + t), elementwise, with the max trick.
            let a = (&s + (1.0 - self.beta).ln())?;
            let b = (&t + self.beta.ln())?;
            let top = a.maximum(&b)?.detach();
            let m =
                ((a.broadcast_sub(&top)?.exp()? + b.broadcast_sub(&top)?.exp()?)?.log()? + &top)?;
            ((kl(&t, &m)? * self.beta)? + (kl(&s, &m)? * (1.0 - self.beta))?)?
        };
        Ok((per_token.sum_all()? / positions as f64)?)
    }
}

/// KL(p ‖ q) summed over every element, from log-probabilities.
fn kl(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    Ok((log_p.exp()? * (log_p - log_q)?)?.sum_keepdim(D::Minus1)?)
}
