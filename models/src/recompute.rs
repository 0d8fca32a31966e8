//! Activation checkpointing: a differentiable segment (a decoder layer) whose activations are
//! not kept for the backward pass but computed again there, so training memory holds each
//! layer's input and one layer's activations at a time instead of every layer's.
//!
//! Why this shape: candle's autograd keeps every node reachable from the loss until `backward`
//! returns and has no hook for re-running part of the graph. [`recomputed`] therefore cuts the
//! segment's graph off after its forward (the output is detached and handed to a one-input
//! custom op on the segment's input) and, when the backward reaches that op, runs the segment
//! again on a fresh variable copy of the input and differentiates it there. The op can return
//! only its input's gradient; the gradients of the segment's parameters go to a
//! [`RecomputeGrads`] given by the trainer, which adds them to the main backward's store.
//!
//! The recomputation runs the same code on the same inputs, so on a deterministic device the
//! gradients equal those of the whole graph bit for bit (`student/tests/
//! activation_checkpointing.rs`); the price is one more forward of every layer per step.

use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor, Var};

use crate::Result;

/// The parameter gradients of the recomputed segments of one backward pass, collected beside
/// candle's store (a custom op returns only its input's gradient).
pub struct RecomputeGrads {
    /// The tensors gradients are collected for: the trainable variables.
    params: Vec<Tensor>,
    /// Their summed gradients, in `params` order.
    sums: Mutex<Vec<Option<Tensor>>>,
}

impl RecomputeGrads {
    /// Collects gradients for `params` (the trainable variables; in mixed precision the f32
    /// masters, which a segment reaches through its recorded casts).
    pub fn new(params: Vec<Tensor>) -> Arc<Self> {
        let sums = Mutex::new(vec![None; params.len()]);
        Arc::new(Self { params, sums })
    }

    /// Moves the parameters' gradients out of a segment's own backward store.
    fn collect(&self, store: &mut GradStore) -> candle_core::Result<()> {
        let mut sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        for (sum, p) in sums.iter_mut().zip(&self.params) {
            if let Some(g) = store.remove(p) {
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// Adds what the segments collected to the main backward's `store` (and forgets it), so
    /// the store holds every parameter's whole gradient.
    pub fn add_to(&self, store: &mut GradStore) -> Result<()> {
        let mut sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        for (sum, p) in sums.iter_mut().zip(&self.params) {
            if let Some(g) = sum.take() {
                let total = match store.remove(p) {
                    Some(other) => (other + g)?,
                    None => g,
                };
                store.insert(p, total);
            }
        }
        Ok(())
    }
}

/// `ys`, computed by `forward(xs)`, with its graph replaced by one node that keeps only `xs`:
/// backward runs `forward` again and differentiates that. `forward` must compute the same
/// numbers each time (no dropout, no state).
pub fn recomputed<F>(
    xs: &Tensor,
    ys: Tensor,
    grads: &Arc<RecomputeGrads>,
    forward: F,
) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    if !xs.track_op() {
        // Nothing upstream to differentiate: the segment's own graph is the whole story.
        return Ok(ys);
    }
    let op = Recomputed {
        output: ComputedOutput::new(ys),
        forward: Box::new(forward),
        grads: grads.clone(),
    };
    Ok(xs.apply_op1(op)?)
}

type Forward = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

struct Recomputed {
    output: ComputedOutput,
    forward: Forward,
    grads: Arc<RecomputeGrads>,
}

/// An output computed outside a custom op (with tensor ops, on any device) and handed to the
/// op's forward, which must return it as storage: how a custom op gets a backward of its own
/// over a forward made of ordinary ops. The output is taken once.
pub(crate) struct ComputedOutput(Mutex<Option<Tensor>>);

impl ComputedOutput {
    pub(crate) fn new(output: Tensor) -> Self {
        Self(Mutex::new(Some(output.detach())))
    }

    fn take(&self, op: &str) -> candle_core::Result<Tensor> {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let ys = taken.ok_or_else(|| candle_core::Error::Msg(format!("{op} ran twice")))?;
        // The op's result is the storage as it lies: contiguous from offset 0, or a copy.
        if ys.layout().is_contiguous() && ys.layout().start_offset() == 0 {
            Ok(ys)
        } else {
            ys.copy()
        }
    }

    /// The output as CPU storage (the body of a custom op's `cpu_fwd`).
    pub(crate) fn cpu(&self, op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
        let ys = self.take(op)?;
        let (storage, _) = ys.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.clone(), ys.shape().clone())),
            _ => candle_core::bail!("{op}: the output is not on the CPU"),
        }
    }

    /// The output as GPU storage (the body of a custom op's `cuda_fwd`).
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self, op: &str) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let ys = self.take(op)?;
        let (storage, layout) = ys.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, ys.shape().clone())),
            _ => candle_core::bail!("{op}: the output is not on the GPU"),
        }
    }
}

impl CustomOp1 for Recomputed {
    fn name(&self) -> &'static str {
        "recomputed-segment"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.cuda(self.name())
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xs = Var::from_tensor(&arg.detach())?;
        let ys = (self.forward)(xs.as_tensor()).map_err(candle_core::Error::wrap)?;
        // d/dθ Σ ys · grad (grad a constant) is the vector-Jacobian product the chain rule
        // asks for; candle's backward seeds with ones, so the sum is the way to seed `grad`.
        let mut store = (ys * grad.detach())?.sum_all()?.backward()?;
        self.grads.collect(&mut store)?;
        match store.remove(xs.as_tensor()) {
            Some(g) => Ok(Some(g)),
            None => Ok(Some(arg.zeros_like()?)),
        }
    }
}
