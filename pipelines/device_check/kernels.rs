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
    agreement, emit, logits_and_grads, random_weights, rel_diff, rel_l2, tiny_config_with,
    with_fields,
};

/// The CUDA kernels against candle's composed ops on the same device: the parity models with
/// the kernels on and off (RMSNorm, RoPE, SwiGLU, the attention softmax and their backward; at
/// head dim 64 in bf16 flash attention), flash attention alone against the chunks, a
/// ragged batch decoded both ways, sampling against the host sampler, and the loss's
/// cross-entropy and the AdamW step alone. Returns whether any failed.
pub(super) fn cuda_kernels(dev: &Device) -> anyhow::Result<bool> {
    use distill_models::cuda;
    let mut failed = models(dev)?;
    failed |= flash_attention(dev)?;
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

/// The parity models (Qwen2 and Llama, heads of 16 and of 64 dims, f32 and bf16) with the
/// kernels off and on. Returns whether any failed.
fn models(dev: &Device) -> anyhow::Result<bool> {
    use distill_models::cuda;
    let mut failed = false;
    // Heads of 16 dims, and of 64 (hidden 256 over 4 heads), where bf16 takes flash attention.
    let shapes = [
        json!({}),
        json!({"hidden_size": 256, "intermediate_size": 512}),
    ];
    for (arch, shape) in ["qwen2", "llama"]
        .into_iter()
        .flat_map(|a| shapes.iter().map(move |s| (a, s)))
    {
        let config = tiny_config_with(arch, shape.clone())?;
        let head_dim = config.spec()?.head_dim;
        let weights = random_weights(&config, 11)?;
        for dtype in [DType::F32, DType::BF16] {
            cuda::set_enabled(false);
            let composed = logits_and_grads(&config, &weights, dtype, dev);
            cuda::set_enabled(true);
            let got = logits_and_grads(&config, &weights, dtype, dev)?;
            let (fields, ok) = agreement(&composed?, &got, dtype)?;
            failed |= !ok;
            emit(with_fields(
                json!({
                    "check": "cuda_kernels", "what": "model", "arch": arch, "dtype": dtype.as_str(),
                    "head_dim": head_dim,
                    "flash_attention": cuda::flash_attention_runs(dev, dtype, head_dim),
                }),
                fields,
            ));
        }
    }
    Ok(failed)
}

/// Flash attention (`cuda::flash_attention`) on the same GPU against the chunked path in f32:
/// output and q, k, v gradients at a Qwen2.5-1.5B shape (12 heads over 2 kv heads of 128) and a
/// SmolLM2 one (9 over 3 of 64), two rows of 2,048 tokens (one packed with three documents),
/// beside the chunked path's own bf16 error; then forward + backward time of both paths on
/// one-document rows (the causal attention `gpu/check.py` times PyTorch's SDPA on). Skipped
/// when `DISTILL_FLASH_ATTENTION=0` turned flash attention off. Returns whether it failed.
pub(super) fn flash_attention(dev: &Device) -> anyhow::Result<bool> {
    use candle_core::Var;
    use distill_models::chunked_attention::{attention, QueryChunks};
    use distill_models::cuda;
    if !cuda::flash_attention_enabled() {
        // `DISTILL_FLASH_ATTENTION=0`: gpu/check.sh's rerun after flash attention failed.
        emit(
            json!({"check": "cuda_kernels", "what": "flash_attention", "skipped": "DISTILL_FLASH_ATTENTION=0"}),
        );
        return Ok(false);
    }
    let (batch, seq) = (2, 2048);
    let documents = |lens: &[u32]| -> Vec<u32> { lens.iter().flat_map(|&n| 0..n).collect() };
    let packed = vec![documents(&[300, 700, 1048]), documents(&[2048])];
    let whole = vec![documents(&[2048]); batch];
    let mut failed = false;
    for (heads, kv_heads, head_dim) in [(12, 2, 128), (9, 3, 64)] {
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = Tensor::randn(0f32, 1.0, (batch, heads, seq, head_dim), dev)?;
        let k = Tensor::randn(0f32, 1.0, (batch, kv_heads, seq, head_dim), dev)?;
        let v = Tensor::randn(0f32, 1.0, (batch, kv_heads, seq, head_dim), dev)?;
        let d_out = Tensor::randn(0f32, 1.0, (batch, heads, seq, head_dim), dev)?;
        // Output and gradients of Σ out ∘ d_out, in `dtype`.
        let grads = |dtype: DType, chunks: &QueryChunks| -> anyhow::Result<Vec<Tensor>> {
            let cast = |t: &Tensor| t.to_dtype(dtype).and_then(|t| Var::from_tensor(&t));
            let (qv, kv, vv) = (cast(&q)?, cast(&k)?, cast(&v)?);
            let out = attention(&qv, &kv, &vv, chunks, scale)?;
            let grads = (&out * d_out.to_dtype(dtype)?)?.sum_all()?.backward()?;
            let mut all = vec![out];
            for var in [&qv, &kv, &vv] {
                let g = grads
                    .get(var)
                    .context("attention left an input without a gradient")?;
                all.push(g.clone());
            }
            Ok(all)
        };
        let run = |dtype: DType, rows: &[Vec<u32>]| -> anyhow::Result<Vec<Tensor>> {
            let all = grads(dtype, &QueryChunks::new(rows, heads, dev)?)?;
            Ok(all
                .iter()
                .map(|t| t.to_dtype(DType::F32))
                .collect::<Result<_, _>>()?)
        };
        cuda::set_flash_attention(false);
        let reference = run(DType::F32, &packed);
        let chunked = run(DType::BF16, &packed);
        cuda::set_flash_attention(true);
        let flash = run(DType::BF16, &packed);
        let (reference, chunked, flash) = (reference?, chunked?, flash?);
        let errors = |got: &[Tensor]| -> anyhow::Result<Vec<f32>> {
            reference
                .iter()
                .zip(got)
                .map(|(r, g)| rel_l2(r, g))
                .collect()
        };
        let (flash_err, chunked_err) = (errors(&flash)?, errors(&chunked)?);
        let tolerance = [1e-2, 3e-2, 3e-2, 3e-2];
        let ok = flash_err.iter().zip(tolerance).all(|(e, t)| *e <= t);
        failed |= !ok;
        emit(json!({
            "check": "cuda_kernels", "what": "flash_attention", "batch": batch, "seq": seq,
            "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "rel_l2_out_dq_dk_dv": flash_err, "chunked_bf16_rel_l2": chunked_err,
            "tolerance": tolerance, "ok": ok,
        }));

        // Forward + backward of one-document rows, 3 warm-up and 10 timed, each path (the
        // inputs' bf16 copies and the loss's product and sum included, for both).
        let chunks = QueryChunks::new(&whole, heads, dev)?;
        let time = |flash_on: bool| -> anyhow::Result<f64> {
            cuda::set_flash_attention(flash_on);
            for _ in 0..3 {
                grads(DType::BF16, &chunks)?;
            }
            dev.synchronize()?;
            let start = Instant::now();
            for _ in 0..10 {
                grads(DType::BF16, &chunks)?;
            }
            dev.synchronize()?;
            Ok(start.elapsed().as_secs_f64() / 10.0)
        };
        let (chunked_s, flash_s) = (time(false), time(true));
        cuda::set_flash_attention(true);
        // Causal pairs × head dim × 4 flops forward (two products), 2.5× that backward.
        let pairs = (batch * heads * seq * (seq + 1) / 2) as f64;
        let flops = 3.5 * 4.0 * pairs * head_dim as f64;
        let figure = |s: &anyhow::Result<f64>| match s {
            Ok(s) => json!({"ms": s * 1e3, "tflops": flops / s / 1e12}),
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        emit(json!({
            "check": "flash_attention_speed", "batch": batch, "seq": seq, "heads": heads,
            "kv_heads": kv_heads, "head_dim": head_dim,
            "flash": figure(&flash_s), "chunked": figure(&chunked_s),
        }));
    }
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

    /// On the CPU the kernels never run, so both runs of each model agree: this proves the
    /// check's configs (the 64-dim heads too) build and train.
    #[test]
    fn the_model_check_runs() {
        assert!(!models(&Device::Cpu).unwrap());
    }
}
