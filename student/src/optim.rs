//! AdamW with decoupled weight decay, stepped in place over each parameter's f32 buffer.
//!
//! candle-nn's `AdamW` builds every update from tensor ops (`m * β1 + g * (1 − β1)`, …): about ten
//! temporaries per parameter per step, 4–10× slower than PyTorch. Here one pass over each
//! parameter reads the gradient and writes parameter, first and second moments together, in
//! parallel across parameters and across chunks of large ones. The parameter is updated through
//! candle's `InplaceOp1`, the only public way to write a `Var`'s storage without reallocating it.
//!
//! The arithmetic follows `torch.optim.AdamW` (single-tensor path) operation for operation:
//! `p *= 1 − lr·wd`, `m += (g − m)(1 − β1)`, `v = β2·v + (1 − β2)·g·g`,
//! `p −= lr / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`; bias corrections in f64 as Python does.
//!
//! That fast path is for f32 parameters on the CPU. On a CUDA device the same arithmetic is one
//! kernel launch per parameter ([`distill_models::cuda::adamw_step`]), with the moments kept
//! there in the parameter's dtype (as `torch.optim.AdamW` keeps them); elsewhere (bf16 on the
//! CPU, kernels turned off) it runs as candle tensor ops on the parameter's device, in f32.
//!
//! Gradient clipping and accumulation live beside it: [`GradBuffers`] sums micro-batch gradients
//! into one f32 tensor per parameter (the `.grad` of PyTorch), [`GradBuffers::global_norm`] gives
//! the norm for clipping, and the clip factor is folded into the step instead of rescaling the
//! gradients in a separate pass.

use std::cell::RefCell;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use distill_models::cuda::{self, AdamWStep};

use crate::loss::f32_slice;
use crate::{Error, Result};

/// Elements per parallel work item inside one parameter: large enough to amortise scheduling,
/// small enough to spread an embedding matrix over every core.
const CHUNK: usize = 1 << 16;

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Also decay embeddings (and a tied head). Norm weights and biases are never decayed.
    pub decay_embeddings: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_embeddings: false,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::Config(format!(
                    "`optim.{name}` must be in [0, 1), got `{b}`"
                )));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::Config(format!(
                "`optim.eps` must be positive, got `{}`",
                self.eps
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::Config(format!(
                "`optim.weight_decay` must be zero or positive, got `{}`",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

/// Whether a parameter gets weight decay: matrices do; vectors (norm weights, biases) never do;
/// the embedding table (and so a tied head) only with `decay_embeddings`. Decided by rank and
/// Hugging Face name, the same rule the golden PyTorch script applies.
pub fn decays(name: &str, rank: usize, decay_embeddings: bool) -> bool {
    rank >= 2 && (decay_embeddings || !name.contains("embed_tokens"))
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// First and second moments: host buffers for the CPU f32 fast path, device tensors (in the
/// parameter's dtype) elsewhere.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        Ok(if on_host(var) {
            let n = var.elem_count();
            Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        } else {
            Moments::Device {
                m: var.zeros_like()?,
                v: var.zeros_like()?,
            }
        })
    }

    /// Both moments as CPU f32 tensors of `shape` (the checkpoint layout).
    fn to_cpu(&self, shape: &candle_core::Shape) -> Result<(Tensor, Tensor)> {
        let dev = &Device::Cpu;
        Ok(match self {
            Moments::Host { m, v } => (
                Tensor::from_slice(m, shape.clone(), dev)?,
                Tensor::from_slice(v, shape.clone(), dev)?,
            ),
            Moments::Device { m, v } => (
                m.to_device(dev)?.to_dtype(DType::F32)?,
                v.to_device(dev)?.to_dtype(DType::F32)?,
            ),
        })
    }
}

/// One tensor of the optimizer file: a moment with its shape (borrowed from the optimizer on
/// the host, converted to bytes when written; read back from a device), or the step.
enum StateView<'a> {
    Moment(std::borrow::Cow<'a, [f32]>, Vec<usize>),
    Step(i64),
}

impl safetensors::View for StateView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            StateView::Step(_) => safetensors::Dtype::I64,
            _ => safetensors::Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            StateView::Moment(_, shape) => shape,
            StateView::Step(_) => &[1],
        }
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(match self {
            StateView::Moment(xs, _) => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
            StateView::Step(step) => step.to_le_bytes().to_vec(),
        })
    }

    fn data_len(&self) -> usize {
        match self {
            StateView::Moment(xs, _) => 4 * xs.len(),
            StateView::Step(_) => 8,
        }
    }
}

/// Whether a parameter takes the host fast path (f32 on the CPU).
fn on_host(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32
}

/// The optimizer: parameters (by Hugging Face name), their moments and the step count.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    step: u64,
}

impl AdamW {
    /// `params` in a fixed order (the gradient buffers use the same order).
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let params = params
            .into_iter()
            .map(|(name, var)| {
                Ok(Param {
                    decay: decays(&name, var.rank(), config.decay_embeddings),
                    moments: Moments::zeros(&var)?,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            params,
            step: 0,
        })
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// Names of the parameters that get weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// One AdamW step at learning rate `lr`, with gradients multiplied by `grad_scale` (the
    /// clipping factor) as they are read.
    pub fn step(&mut self, grads: &GradBuffers, lr: f64, grad_scale: f32) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let c = &self.config;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let consts = AdamWStep {
            decay_factor: (1.0 - lr * c.weight_decay) as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            step_size: (lr / bias1) as f32,
            bias2_sqrt: bias2_sqrt as f32,
            eps: c.eps as f32,
            grad_scale,
        };
        let step_param = |(i, p): (usize, &mut Param)| -> Result<()> {
            // PyTorch skips a parameter whose `.grad` is None; so does this step.
            let Some(g) = grads.get(i) else {
                return Ok(());
            };
            match &mut p.moments {
                Moments::Host { m, v } => {
                    let (s, l) = g.storage_and_layout();
                    let op = FusedAdamW {
                        consts: &consts,
                        decay: p.decay,
                        grad: f32_slice(&s, l)?,
                        moments: RefCell::new((m, v)),
                    };
                    Ok(p.var.as_tensor().inplace_op1(&op)?)
                }
                Moments::Device { m, v } => {
                    let var = p.var.as_tensor();
                    let contiguous = [var, &*m, &*v, g].iter().all(|t| t.is_contiguous());
                    if contiguous && cuda::supported_all(&[var, m, v]) && cuda::supported(g) {
                        Ok(cuda::adamw_step(var, m, v, g, &consts, p.decay)?)
                    } else {
                        adamw_tensors(&consts, p.decay, &p.var, m, v, g)
                    }
                }
            }
        };
        let all_host = self
            .params
            .iter()
            .all(|p| matches!(p.moments, Moments::Host { .. }));
        if all_host {
            self.params
                .par_iter_mut()
                .enumerate()
                .try_for_each(step_param)
        } else {
            // Device ops queue on one stream: issue them from one thread.
            self.params.iter_mut().enumerate().try_for_each(step_param)
        }
    }

    /// Writes the moments and step (`{name}.exp_avg`, `{name}.exp_avg_sq` in f32, `step` as
    /// i64), the optimizer file of a checkpoint. Host moments are converted when the writer
    /// reaches them, so saving holds one tensor's bytes at a time: a copy of all the moments at
    /// once (twice the parameters, in f32) was the peak memory of a whole CPU training run.
    /// Device moments are read back to the host first (there a failure is an error, not a
    /// short file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let write = |message: String| Error::Write {
            path: path.to_path_buf(),
            message,
        };
        let mut views = vec![("step".to_string(), StateView::Step(self.step as i64))];
        for p in &self.params {
            let shape = p.var.dims().to_vec();
            let (m, v) = match &p.moments {
                Moments::Host { m, v } => (
                    StateView::Moment(m.into(), shape.clone()),
                    StateView::Moment(v.into(), shape),
                ),
                Moments::Device { .. } => {
                    let (m, v) = p
                        .moments
                        .to_cpu(p.var.shape())
                        .map_err(|e| write(e.to_string()))?;
                    let host = |t: Tensor| -> Result<StateView> {
                        let xs = t.flatten_all()?.to_vec1::<f32>()?;
                        Ok(StateView::Moment(xs.into(), shape.clone()))
                    };
                    (host(m)?, host(v)?)
                }
            };
            views.push((format!("{}.exp_avg", p.name), m));
            views.push((format!("{}.exp_avg_sq", p.name), v));
        }
        safetensors::serialize_to_file(views, None, path).map_err(|e| write(e.to_string()))
    }

    /// Restores moments and step saved by [`save`](Self::save); every parameter must be present
    /// with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::checkpoint(path, e))?;
        let get = |key: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = tensors
                .get(key)
                .ok_or_else(|| Error::checkpoint(path, format!("no tensor `{key}`")))?;
            if t.dims() != shape {
                return Err(Error::checkpoint(
                    path,
                    format!("`{key}` has shape {:?}, the model {shape:?}", t.dims()),
                ));
            }
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let dims = p.var.dims();
            restored.push((
                get(&format!("{}.exp_avg", p.name), dims)?,
                get(&format!("{}.exp_avg_sq", p.name), dims)?,
            ));
        }
        let step = tensors
            .get("step")
            .ok_or_else(|| Error::checkpoint(path, "no tensor `step`"))?
            .to_vec1::<i64>()?;
        for (p, (m, v)) in self.params.iter_mut().zip(restored) {
            p.moments = match p.moments {
                Moments::Host { .. } => Moments::Host { m, v },
                Moments::Device { .. } => {
                    let (dev, dtype, shape) = (p.var.device(), p.var.dtype(), p.var.shape());
                    let up = |x: Vec<f32>| -> Result<Tensor> {
                        Ok(Tensor::from_vec(x, shape.clone(), dev)?.to_dtype(dtype)?)
                    };
                    Moments::Device {
                        m: up(m)?,
                        v: up(v)?,
                    }
                }
            };
        }
        self.step = step.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }
}

/// The AdamW step of [`adamw_kernel`] as tensor ops on the parameter's device, in f32; the
/// parameter and moments are written back in their own dtype.
fn adamw_tensors(
    k: &AdamWStep,
    decay: bool,
    var: &Var,
    m: &mut Tensor,
    v: &mut Tensor,
    grad: &Tensor,
) -> Result<()> {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let g = f32(grad)?.affine(k.grad_scale as f64, 0.0)?;
    let mut x = f32(&var.as_detached_tensor())?;
    if decay {
        x = x.affine(k.decay_factor as f64, 0.0)?;
    }
    let m32 = f32(m)?;
    let mi = (&m32 + ((&g - &m32)? * k.one_minus_beta1 as f64)?)?;
    let vi = ((f32(v)? * k.beta2 as f64)? + (g.sqr()? * k.one_minus_beta2 as f64)?)?;
    let denom = vi.sqrt()?.affine(1.0 / k.bias2_sqrt as f64, k.eps as f64)?;
    let update = (mi.div(&denom)? * (-k.step_size) as f64)?;
    var.set(&(x + update)?.to_dtype(var.dtype())?)?;
    *m = mi.to_dtype(m.dtype())?;
    *v = vi.to_dtype(v.dtype())?;
    Ok(())
}

struct FusedAdamW<'a> {
    consts: &'a AdamWStep,
    decay: bool,
    grad: &'a [f32],
    moments: RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl InplaceOp1 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused AdamW needs f32 parameters");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused AdamW needs contiguous parameters");
        };
        let param = &mut data[start..end];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if param.len() != self.grad.len() || param.len() != m.len() {
            candle_core::bail!("fused AdamW: parameter, gradient and moments differ in size");
        }
        let (k, decay) = (self.consts, self.decay);
        param
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(self.grad.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| adamw_kernel(k, decay, p, m, v, g));
        Ok(())
    }
}

#[inline]
fn adamw_kernel(
    k: &AdamWStep,
    decay: bool,
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
) {
    for i in 0..p.len() {
        let g = g[i] * k.grad_scale;
        let mut x = p[i];
        if decay {
            x *= k.decay_factor;
        }
        // torch's lerp with weight < 0.5: m + w·(g − m).
        let mi = m[i] + k.one_minus_beta1 * (g - m[i]);
        let vi = v[i] * k.beta2 + k.one_minus_beta2 * g * g;
        let denom = vi.sqrt() / k.bias2_sqrt + k.eps;
        p[i] = x + -k.step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

/// Gradients summed over the micro-batches of one optimizer step, one f32 tensor per parameter
/// in the optimizer's order (the `.grad` of PyTorch).
///
/// The first micro-batch's gradients are taken out of candle's `GradStore` rather than copied,
/// so a step holds one gradient per parameter, as PyTorch does; later micro-batches add to them
/// one parameter at a time.
#[derive(Default)]
pub struct GradBuffers {
    grads: Vec<Option<Tensor>>,
}

impl GradBuffers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of the optimizer's parameters from one backward pass (a parameter
    /// without a gradient contributes zero). Consumes the store: nothing else in it is needed.
    pub fn accumulate(&mut self, mut store: GradStore, optimizer: &AdamW) -> Result<()> {
        self.grads.resize(optimizer.params.len(), None);
        for (slot, p) in self.grads.iter_mut().zip(&optimizer.params) {
            let Some(g) = store.remove(p.var.as_tensor()) else {
                continue;
            };
            if g.dims() != p.var.dims() {
                return Err(Error::Batch(format!(
                    "gradient of `{}` has shape {:?}, the parameter {:?}",
                    p.name,
                    g.dims(),
                    p.var.dims()
                )));
            }
            *slot = Some(match slot.take() {
                Some(sum) => (sum + g)?,
                None => g.contiguous()?,
            });
        }
        Ok(())
    }

    /// Starts the next optimizer step: drops the summed gradients.
    pub fn clear(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
    }

    /// The summed gradient of parameter `i` (optimizer order), if it received one.
    pub fn get(&self, i: usize) -> Option<&Tensor> {
        self.grads.get(i).and_then(Option::as_ref)
    }

    /// L2 norm over every gradient (as `torch.nn.utils.clip_grad_norm_` measures it), summed in
    /// f64 in a fixed order so it is reproducible.
    ///
    /// Gradients off the host (a GPU, bf16) are squared and summed on their device in f32, one
    /// partial sum per parameter, and only those partial sums are read back, in one transfer.
    pub fn global_norm(&self) -> Result<f64> {
        let host = |g: &Tensor| g.device().is_cpu() && g.dtype() == DType::F32;
        let per = self
            .grads
            .par_iter()
            .map(|g| -> Result<f64> {
                let Some(g) = g.as_ref().filter(|g| host(g)) else {
                    return Ok(0.0);
                };
                let (s, l) = g.storage_and_layout();
                let x = f32_slice(&s, l)?;
                Ok(x.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            })
            .collect::<Result<Vec<f64>>>()?;
        let device_sums = self
            .grads
            .iter()
            .flatten()
            .filter(|g| !host(g))
            .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
            .collect::<candle_core::Result<Vec<Tensor>>>()?;
        let device_total: f64 = if device_sums.is_empty() {
            0.0
        } else {
            Tensor::stack(&device_sums, 0)?
                .to_vec1::<f32>()?
                .iter()
                .map(|&x| x as f64)
                .sum()
        };
        Ok((per.iter().sum::<f64>() + device_total).sqrt())
    }
}

/// The factor `clip_grad_norm_` multiplies gradients by: `min(1, max_norm / (norm + 1e-6))`;
/// no clipping when `max_norm` is `None`.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f32 {
    match max_norm {
        Some(max) => (max / (norm + 1e-6)).min(1.0) as f32,
        None => 1.0,
    }
}
