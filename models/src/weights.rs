//! Where a model's weights come from while its layers are built (checkpoint tensors, fresh
//! trainable variables, or quantized GGUF blocks), and the projection type that holds them.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::{QMatMulOp, QMatrix};
use crate::transformer::Spec;
use crate::{Error, Result};

/// A projection: a float matrix (trainable, differentiable) or a quantized GGUF matrix run as
/// stored (inference only): by the batched kernels of [`crate::kernels`] on the CPU for the
/// types they cover, by candle's `QMatMul` otherwise.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(candle_nn::Linear),
    Quantized {
        weight: QuantizedWeight,
        bias: Option<Tensor>,
    },
}

/// A quantized matrix in exactly one form: re-tiled for [`crate::kernels`], or as candle stores it.
/// (Keeping both would double the memory of a large quantized teacher.)
#[derive(Debug, Clone)]
pub enum QuantizedWeight {
    Tiled(Arc<QMatrix>),
    Candle(QMatMul),
}

impl Linear {
    /// A quantized projection, re-tiled for [`crate::kernels`] when they cover its type.
    pub(crate) fn quantized(q: &Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let tiled = if q.device().is_cpu() {
            QMatrix::from_qtensor(q)?
        } else {
            None
        };
        let weight = match tiled {
            Some(t) => QuantizedWeight::Tiled(Arc::new(t)),
            None => QuantizedWeight::Candle(QMatMul::from_arc(q.clone())?),
        };
        Ok(Linear::Quantized { weight, bias })
    }

    /// The float weight matrix `[out, in]`, when there is one.
    pub fn weight(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense(l) => Some(l.weight()),
            Linear::Quantized { .. } => None,
        }
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // Decoding a float checkpoint on the CPU: a few rows, each weight read once.
            Linear::Dense(l) => match crate::kernels::float::forward(l.weight(), xs) {
                Some(ys) => match l.bias() {
                    Some(b) => ys?.broadcast_add(b),
                    None => ys,
                },
                None => l.forward(xs),
            },
            Linear::Quantized { weight, bias } => {
                let ys = match weight {
                    // Tiled matrices exist only on the CPU; the kernel takes f32 rows.
                    QuantizedWeight::Tiled(t) => xs
                        .to_dtype(DType::F32)?
                        .contiguous()?
                        .apply_op1_no_bwd(&QMatMulOp(t))?
                        .to_dtype(xs.dtype())?,
                    QuantizedWeight::Candle(w) => w.forward(&xs.contiguous()?)?,
                };
                match bias {
                    Some(b) => ys.broadcast_add(b),
                    None => Ok(ys),
                }
            }
        }
    }
}

/// Where the weights come from while the layers are built.
pub(crate) enum Weights<'a> {
    /// A checkpoint's tensors, or fresh trainable variables from a `VarMap`.
    Float(VarBuilder<'a>),
    /// GGUF tensors kept in their stored type; norms, biases and the embedding table are
    /// dequantized, matrices stay quantized.
    Quantized(&'a HashMap<String, Arc<QTensor>>, Device),
}

impl Weights<'_> {
    pub(crate) fn device(&self) -> &Device {
        match self {
            Weights::Float(vb) => vb.device(),
            Weights::Quantized(_, device) => device,
        }
    }

    pub(crate) fn qtensor(&self, name: &str) -> Result<&Arc<QTensor>> {
        let missing = || Error::MissingTensor {
            name: name.to_string(),
            path: "quantized weights".into(),
        };
        match self {
            Weights::Quantized(map, _) => map.get(name).ok_or_else(missing),
            Weights::Float(_) => Err(missing()),
        }
    }

    pub(crate) fn check(name: &str, q: &QTensor, shape: &[usize]) -> Result<()> {
        if q.shape().dims() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: q.shape().dims().to_vec(),
            });
        }
        Ok(())
    }

    pub(crate) fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        match self {
            Weights::Float(vb) => Ok(vb.get_with_hints(shape, name, init)?),
            Weights::Quantized(_, device) => {
                let q = self.qtensor(name)?;
                Self::check(name, q, shape)?;
                Ok(q.dequantize(device)?.to_dtype(DType::F32)?)
            }
        }
    }

    pub(crate) fn linear(
        &self,
        spec: &Spec,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Linear> {
        let bias = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out_dim], Init::Const(0.0))?)
        } else {
            None
        };
        let name = format!("{prefix}.weight");
        match self {
            Weights::Float(_) => {
                let init = Init::Randn {
                    mean: 0.0,
                    stdev: spec.initializer_range,
                };
                let weight = self.tensor(&name, &[out_dim, in_dim], init)?;
                Ok(Linear::Dense(candle_nn::Linear::new(weight, bias)))
            }
            Weights::Quantized(..) => {
                let q = self.qtensor(&name)?;
                Self::check(&name, q, &[out_dim, in_dim])?;
                Linear::quantized(q, bias)
            }
        }
    }
}
