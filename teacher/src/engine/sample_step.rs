//! Sampling a step's tokens: on the host from the step's logits read back at once (rows in
//! parallel), or on a CUDA device with only ids and log-probabilities read back.

use candle_core::{DType, Tensor, D};
use distill_models::cuda;
use rayon::prelude::*;

use super::{Engine, Seq};
use crate::backend::SamplingParams;
use crate::sampling::sample;
use crate::Result;

impl Engine {
    /// One token for each `(live index, logits [1, vocab])`. The logits of the step are read
    /// back in one transfer (never one per sequence); when every sequence is greedy and the
    /// model is off the CPU, the argmax runs on the device and only the ids cross; on a CUDA
    /// device sampling and log-probabilities too ([`sample_on_device`]; its sampler walks the
    /// host sampler's nucleus in id order, so a seed gives other tokens there than on the CPU).
    pub(super) fn sample_step(
        &self,
        picks: &[(usize, Tensor)],
        live: &mut [Seq],
    ) -> Result<Vec<u32>> {
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<&Tensor> = picks.iter().map(|(_, l)| l).collect();
        let logits = Tensor::cat(&rows, 0)?;
        let greedy = picks.iter().all(|&(i, _)| {
            let s = &live[i].request.sampling;
            s.temperature <= 0.0 && s.logprobs == 0
        });
        if greedy && !logits.device().is_cpu() {
            return Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
        }
        if cuda::supported(&logits) {
            if let Some(tokens) = sample_on_device(&logits, picks, live)? {
                return Ok(tokens);
            }
        }
        let host: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        // Each row is sampled on its own thread: over a 150k-token vocabulary a row costs about
        // a millisecond (the softmax normaliser, the nucleus, the log-probabilities), which at
        // batch 32 would otherwise leave every core but one idle between model steps. Each
        // sequence draws from its own generator, so the tokens do not depend on the threads.
        let mut slots: Vec<Option<&mut Seq>> = live.iter_mut().map(Some).collect();
        let work: Vec<(&mut Seq, Vec<f32>)> = picks
            .iter()
            .zip(host)
            .map(|(&(i, _), row)| (slots[i].take().expect("a sequence is picked once"), row))
            .collect();
        work.into_par_iter()
            .map(|(seq, row)| {
                let Seq {
                    request,
                    rng,
                    logprobs,
                    ..
                } = seq;
                let token = sample(&row, &request.sampling, rng);
                if let Some(logprobs) = logprobs {
                    let (lp, top) = top_logprobs(&row, token, logprobs.k());
                    logprobs.push(token, lp, &top)?;
                }
                Ok(token)
            })
            .collect()
    }
}

/// The model's log-probability of `token` and its `k` most likely tokens with theirs (most
/// likely first, ties by id), from one row of raw logits: `log_softmax` at temperature 1,
/// before any sampling filter, as vLLM's and OpenAI's `logprobs` report them.
pub fn top_logprobs(logits: &[f32], token: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    let top = distill_models::ops::top_k_ids(logits, k)
        .into_iter()
        .map(|i| (i, logits[i as usize] - lse))
        .collect();
    (logits[token as usize] - lse, top)
}

/// [`Engine::sample_step`] on a CUDA device, where the step's sequences ask for at most
/// [`cuda::TOP_K_MAX`] log-probabilities: the tokens ([`cuda::sample`]: the arg-max, or a draw
/// under temperature, top-k and top-p from one uniform number per sampled sequence taken from
/// its own generator, as the host sampler draws), and the log-probabilities of the chosen
/// token and of each row's top K ([`cuda::top_k`], the host's ranking), are computed there;
/// only ids and `K + 2` values a row are read back instead of `rows × vocabulary` logits. None
/// where the step asks for more (the caller samples on the host).
fn sample_on_device(
    logits: &Tensor,
    picks: &[(usize, Tensor)],
    live: &mut [Seq],
) -> Result<Option<Vec<u32>>> {
    let params: Vec<&SamplingParams> = picks
        .iter()
        .map(|&(i, _)| &live[i].request.sampling)
        .collect();
    let k = params.iter().map(|s| s.logprobs).max().unwrap_or(0);
    let vocab = logits.dim(1)?;
    if k > cuda::TOP_K_MAX.min(vocab) {
        return Ok(None);
    }
    let temperature: Vec<f32> = params.iter().map(|s| s.temperature).collect();
    let top_p: Vec<f32> = params.iter().map(|s| s.top_p).collect();
    // The kernel reads top-k as u32; a larger k than the vocabulary is no filter.
    let top_k: Vec<u32> = params.iter().map(|s| s.top_k.min(vocab) as u32).collect();
    // A sampled token takes one draw from its sequence's generator, a greedy one none.
    let uniform: Vec<f32> = picks
        .iter()
        .zip(&temperature)
        .map(|(&(i, _), &t)| {
            if t > 0.0 {
                live[i].rng.next_f64() as f32
            } else {
                0.0
            }
        })
        .collect();
    let tokens = cuda::sample(logits, &temperature, &top_p, &top_k, &uniform)?;
    if k > 0 {
        let values = logits.to_dtype(DType::F32)?;
        let lse = values.log_sum_exp(D::Minus1)?.to_vec1::<f32>()?;
        let top = cuda::top_k(logits, k)?;
        let top_values = values.gather(&top, 1)?.to_vec2::<f32>()?;
        let top = top.to_vec2::<u32>()?;
        let chosen = Tensor::new(tokens.as_slice(), logits.device())?.unsqueeze(1)?;
        let chosen = values.gather(&chosen, 1)?.flatten_all()?.to_vec1::<f32>()?;
        for (row, &(i, _)) in picks.iter().enumerate() {
            if let Some(logprobs) = &mut live[i].logprobs {
                let list: Vec<(u32, f32)> = top[row]
                    .iter()
                    .zip(&top_values[row])
                    .take(logprobs.k())
                    .map(|(&id, &v)| (id, v - lse[row]))
                    .collect();
                logprobs.push(tokens[row], chosen[row] - lse[row], &list)?;
            }
        }
    }
    Ok(Some(tokens))
}
