//! `check-device`'s `cuda_kernels` lines: distill's CUDA kernels (`distill_models::cuda`)
//! against candle's composed ops, or the host's own computation, on the same GPU.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use distill_models::transformer::Logits;
use distill_models::Model;
use serde_json::json;

use super::{
    agreement, emit, logits_and_grads, random_weights, rel_diff, tiny_config, tiny_config_with,
    with_fields,
};

/// The CUDA kernels against candle's composed ops on the same device: the parity models with
/// the kernels on and off (RMSNorm, RoPE, SwiGLU, the attention softmax and their backward), a
/// ragged batch decoded both ways, sampling against the host sampler, and the loss's
/// cross-entropy and the AdamW step alone. Returns whether any failed.
pub(super) fn cuda_kernels(dev: &Device) -> anyhow::Result<bool> {
    use distill_models::cuda;
    let mut failed = false;
    for arch in ["qwen2", "llama"] {
        let config = tiny_config(arch)?;
        let weights = random_weights(&config, 11)?;
        for dtype in [DType::F32, DType::BF16] {
            cuda::set_enabled(false);
            let composed = logits_and_grads(&config, &weights, dtype, dev);
            cuda::set_enabled(true);
            let got = logits_and_grads(&config, &weights, dtype, dev)?;
            let (fields, ok) = agreement(&composed?, &got, dtype)?;
            failed |= !ok;
            emit(with_fields(
                json!({"check": "cuda_kernels", "what": "model", "arch": arch, "dtype": dtype.as_str()}),
                fields,
            ));
        }
    }
    failed |= decode_kernel(dev)?;
    failed |= device_sampling(dev)?;
    // The loss's cross-entropy on Qwen-wide rows, against the composed softmax.
    let (rows, vocab, scale) = (64, 151_936, 0.01f32);
    let logits = (Tensor::randn(0f32, 3f32, (rows, vocab), dev)?).to_dtype(DType::BF16)?;
    let targets: Vec<u32> = (0..rows as u32).map(|r| r * 2357 % vocab as u32).collect();
    let target = Tensor::new(targets.as_slice(), dev)?;
    let (loss, grad) = cuda::cross_entropy(&logits, &target, scale, true)?;
    let l32 = logits.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&l32, candle_core::D::Minus1)?;
    let ref_loss = log_probs
        .gather(&target.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?;
    let one_hot = Tensor::zeros((rows, vocab), DType::F32, dev)?.scatter_add(
        &target.unsqueeze(1)?,
        &Tensor::ones((rows, 1), DType::F32, dev)?,
        1,
    )?;
    let ref_grad = ((log_probs.exp()? - one_hot)? * scale as f64)?;
    let grad = grad.context("the cross-entropy kernel returned no gradient")?;
    let (loss_diff, grad_diff) = (
        rel_diff(&ref_loss, &loss)?,
        rel_diff(&ref_grad, &grad.to_dtype(DType::F32)?)?,
    );
    let ok = loss_diff <= 1e-5 && grad_diff <= 1e-2;
    failed |= !ok;
    emit(json!({
        "check": "cuda_kernels", "what": "cross_entropy", "rows": rows, "vocab": vocab,
        "loss_max_rel_diff": loss_diff, "grad_max_rel_diff": grad_diff,
        "tolerance_loss": 1e-5, "tolerance_grad": 1e-2, "ok": ok,
    }));
    // One AdamW step of a 4M-element f32 parameter, against the same arithmetic as tensor ops.
    let n = 1 << 22;
    let p = Tensor::randn(0f32, 1f32, n, dev)?;
    let m = (Tensor::randn(0f32, 1f32, n, dev)? * 0.1)?;
    let v = (Tensor::randn(0f32, 1f32, n, dev)?.sqr()? * 0.01)?;
    let g = Tensor::randn(0f32, 1f32, n, dev)?;
    let k = cuda::AdamWStep {
        decay_factor: 0.9999,
        one_minus_beta1: 0.1,
        beta2: 0.999,
        one_minus_beta2: 0.001,
        step_size: 3e-4,
        bias2_sqrt: 0.05,
        eps: 1e-8,
        grad_scale: 0.5,
    };
    let gs = (&g * k.grad_scale as f64)?;
    let mi = (&m + ((&gs - &m)? * k.one_minus_beta1 as f64)?)?;
    let vi = ((&v * k.beta2 as f64)? + (gs.sqr()? * k.one_minus_beta2 as f64)?)?;
    let denom = vi.sqrt()?.affine(1.0 / k.bias2_sqrt as f64, k.eps as f64)?;
    let ref_p = ((&p * k.decay_factor as f64)? - (mi.div(&denom)? * k.step_size as f64)?)?;
    let (p, m, v) = (p.copy()?, m.copy()?, v.copy()?);
    cuda::adamw_step(&p, &m, &v, &g, &k, true)?;
    let diffs = [
        rel_diff(&ref_p, &p)?,
        rel_diff(&mi, &m)?,
        rel_diff(&vi, &v)?,
    ];
    let ok = diffs.iter().all(|&d| d <= 1e-6);
    failed |= !ok;
    emit(json!({
        "check": "cuda_kernels", "what": "adamw", "elements": n,
        "param_moments_max_rel_diff": diffs, "tolerance": 1e-6, "ok": ok,
    }));
    Ok(failed)
}

/// Decode attention's kernel against the composed attention on the same device: a small bf16
/// model (head dim 32, the kernel's smallest) steps a ragged batch (prompts of 3, 17 and 40
/// tokens, then 12 tokens each, fed the same ids both ways) with the kernels on and off; every
/// step's logits must agree. Returns whether it failed.
fn decode_kernel(dev: &Device) -> anyhow::Result<bool> {
    use distill_models::cuda;
    // Heads of 32 (the kernel's smallest), 3 query heads per kv head.
    let config = tiny_config_with(
        "qwen2",
        json!({"hidden_size": 192, "intermediate_size": 256, "num_attention_heads": 6}),
    )?;
    let weights = random_weights(&config, 13)?;
    let spec = config.spec()?;
    let model = Model::new(&spec, VarBuilder::from_tensors(weights, DType::BF16, dev))?;
    let run = |kernels: bool| -> anyhow::Result<Vec<Tensor>> {
        cuda::set_enabled(kernels);
        let mut caches: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
        let prompts: Vec<Vec<u32>> = [3u32, 17, 40]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 31 + n) % 96).collect())
            .collect();
        let mut logits = Vec::new();
        for step in 0..13u32 {
            let feeds: Vec<Vec<u32>> = (0..3u32)
                .map(|s| match step {
                    0 => prompts[s as usize].clone(),
                    _ => vec![(step * 7 + s * 11) % 96],
                })
                .collect();
            let mut batch: Vec<(&[u32], &mut distill_models::KvCache)> = feeds
                .iter()
                .map(|f| f.as_slice())
                .zip(caches.iter_mut())
                .collect();
            for l in model.step(&mut batch, Logits::Last)? {
                logits.push(l.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
            }
        }
        Ok(logits)
    };
    let composed = run(false);
    let kernel = run(true);
    cuda::set_enabled(true);
    let (composed, kernel) = (composed?, kernel?);
    let mut worst = 0f32;
    for (a, b) in composed.iter().zip(&kernel) {
        worst = worst.max(rel_diff(a, b)?);
    }
    let ok = worst <= 2e-2 && composed.len() == kernel.len();
    emit(json!({
        "check": "cuda_kernels", "what": "decode_attention", "steps": 13, "sequences": 3,
        "logits_max_rel_diff": worst, "tolerance": 2e-2, "ok": ok,
    }));
    Ok(!ok)
}

/// Temperature/top-p sampling on the device against the host sampler's candidates (the
/// teacher's `candidates`) walked in id order, on Qwen-vocabulary-wide rows at the R1
/// protocol's T 0.6 and top-p 0.95, without top-k and at Qwen3's top-k 20, and the time of
/// both (the host's includes reading the logits back). Returns whether it failed.
fn device_sampling(dev: &Device) -> anyhow::Result<bool> {
    use distill_teacher::sampling::{candidates, draw};
    use distill_teacher::SamplingParams;
    let (rows, vocab) = (64, 151_936);
    let logits = (Tensor::randn(0f32, 1f32, (rows, vocab), dev)? * 4.0)?;
    let uniform: Vec<f32> = (0..rows).map(|r| (r as f32 + 0.5) / rows as f32).collect();
    let (temperature, top_p) = (vec![0.6f32; rows], vec![0.95f32; rows]);
    let mut failed = false;
    for top_k in [0usize, 20] {
        let params = SamplingParams {
            temperature: 0.6,
            top_p: 0.95,
            top_k,
            max_new_tokens: 1,
            logprobs: 0,
        };
        let ks = vec![top_k as u32; rows];
        let sample = || distill_models::cuda::sample(&logits, &temperature, &top_p, &ks, &uniform);
        sample()?; // load the module
        let started = Instant::now();
        let ids = sample()?;
        let device_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let host: Vec<Vec<f32>> = logits.to_vec2()?;
        let want: Vec<u32> = host
            .iter()
            .zip(&uniform)
            .map(|(row, &u)| {
                // The device walks the nucleus in id order.
                let mut nucleus = candidates(row, &params);
                nucleus.sort_unstable_by_key(|&(id, _)| id);
                draw(&nucleus, u as f64)
            })
            .collect();
        let host_s = started.elapsed().as_secs_f64();
        let equal = ids.iter().zip(&want).filter(|(a, b)| a == b).count();
        // A draw or a nucleus edge within rounding of a boundary may go either way (f32 sums
        // on the device, f64 on the host).
        let ok = equal + 1 >= rows;
        emit(json!({
            "check": "cuda_kernels", "what": "sampling", "rows": rows, "vocab": vocab,
            "top_k": top_k, "equal_to_host_nucleus": equal, "device_s": device_s,
            "host_with_readback_s": host_s, "ok": ok,
        }));
        failed |= !ok;
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU both runs take the composed attention, so this proves the check itself runs
    /// (ragged batch, prompts then single tokens) and compares what it should.
    #[test]
    fn the_decode_kernel_check_runs() {
        assert!(!decode_kernel(&Device::Cpu).unwrap());
    }
}
