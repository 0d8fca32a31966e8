//! GGUF weights kept in their stored type for fast inference: tensors under Hugging Face names,
//! with llama-architecture q/k rows un-permuted directly on the quantized bytes. Every quant
//! block lies inside one row, so moving whole rows never needs a dequantize/requantize round trip.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::Device;

use crate::gguf::{hf_tensor_name, GgufCheckpoint};
use crate::{Config, Error, Result};

/// Reads every weight of `gguf` as a `QTensor` keyed by Hugging Face name.
pub fn load(gguf: &GgufCheckpoint, device: &Device) -> Result<HashMap<String, Arc<QTensor>>> {
    let config = gguf.config()?;
    let spec = config.spec()?;
    let permuted = matches!(config, Config::Llama(_));
    let path = gguf.path();
    let content = gguf.content();
    let mut reader = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let mut out = HashMap::new();
    for (name, info) in &content.tensor_infos {
        let Some(hf) = hf_tensor_name(name) else {
            continue; // rope_freqs: the frequencies are recomputed from the config
        };
        // Read and rearrange on the host; only finished blocks go to another device.
        let host = Device::Cpu;
        let q = info
            .read(&mut reader, content.tensor_data_offset, &host)
            .map_err(|e| Error::parse(path, format!("cannot read tensor `{name}`: {e}")))?;
        let q = if permuted && (hf.contains(".q_proj.") || hf.contains(".k_proj.")) {
            let heads = if hf.contains(".q_proj.") {
                spec.num_heads
            } else {
                spec.num_kv_heads
            };
            unpermute_quantized_rows(&q, heads, &host)?
        } else {
            q
        };
        let q = if !device.is_cpu() {
            let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
            QTensor::new(storage, q.shape().clone())?
        } else {
            q
        };
        out.insert(hf, Arc::new(q));
    }
    Ok(out)
}

/// The inverse of llama.cpp's q/k permutation on whole rows: Hugging Face row `h·d + k·d/2 + j`
/// is stored at row `h·d + 2j + k` (head `h`, head size `d`, `k ∈ {0, 1}`, `j < d/2`).
fn unpermute_quantized_rows(q: &QTensor, heads: usize, device: &Device) -> Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || rows % (heads * 2) != 0 {
        return Err(Error::Config(format!(
            "cannot un-permute {rows} rows into {heads} heads of even size"
        )));
    }
    let data = q.data()?;
    let row_bytes = data.len() / rows;
    let (d, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for k in 0..2 {
            for j in 0..half {
                let dst = h * d + k * half + j;
                let src = h * d + 2 * j + k;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), device, q.dtype())?;
    Ok(QTensor::new(storage, dims)?)
}
