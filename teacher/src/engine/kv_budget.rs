//! The engine's KV cache budget: which sequences a step feeds and how much of each, within the
//! paged pool's blocks or, on the CPU's f32 path, the same number of blocks' worth of positions
//! in host buffers (`EngineOptions::kv_cache_gib`); when the live sequences outgrow it, the
//! youngest is preempted (its memory given back) and later recomputed, as vLLM does; and the
//! warning before a run whose sequences could outgrow it.

use std::ops::ControlFlow;

use distill_models::kv_pool::BLOCK;
use distill_models::{HostKvDtype, Model};

use super::{Engine, Seq, Update};
use crate::backend::GenStats;
use crate::{Error, Result};

impl Seq {
    /// Blocks the cache needs beyond those it holds for `more` positions.
    fn blocks_wanted(&self, more: usize) -> usize {
        (self.cache.len() + more)
            .div_ceil(BLOCK)
            .saturating_sub(self.cache.blocks_held())
    }

    /// Gives the cache's blocks back; the sequence later feeds its prompt and what it sampled
    /// as a prompt again (its generator, text and log-probabilities stay as they are, so it
    /// goes on as if never paused).
    fn preempt(&mut self) {
        self.cache.clear();
        if self.next.take().is_some() {
            self.replay = [self.prompt.as_slice(), &self.generated].concat();
        }
        self.prefilled = 0;
    }
}

impl Engine {
    /// Blocks the live sequences may hold under the KV cache budget: all but one, kept for a
    /// step's padding row.
    pub(super) fn sequence_blocks(&self) -> Option<usize> {
        self.kv_blocks.map(|limit| limit.saturating_sub(1).max(1))
    }

    /// A warning when `sequences` at once (at most the batch) of `positions` each (prompt and
    /// new tokens, at most the model's context) could need more keys and values than the KV
    /// cache budget holds: the run then pauses and recomputes sequences, which costs time
    /// (`None` when they fit or there is no budget).
    pub fn kv_budget_warning(&self, sequences: usize, positions: usize) -> Option<String> {
        let blocks = self.kv_blocks?;
        kv_budget_warning(
            self.options.batch.min(sequences),
            self.context_len.map_or(positions, |c| positions.min(c)),
            self.model.kv_bytes_per_position() as f64,
            (blocks * self.model.kv_block_bytes()) as f64,
            (!self.model.uses_kv_pool() && self.options.kv_cache_dtype == HostKvDtype::F32)
                .then_some("`--kv-cache-dtype f16` halves it"),
        )
    }

    /// `blocks` for a message: `N blocks (X GiB)`.
    pub(super) fn blocks_described(&self, blocks: usize) -> String {
        let gib = (blocks * self.model.kv_block_bytes()) as f64 / (1u64 << 30) as f64;
        let noun = if blocks == 1 { "block" } else { "blocks" };
        format!("{blocks} {noun} ({gib:.2} GiB)")
    }

    /// The step's feeds, `(live index, tokens)`: every decoding sequence one token, prompts
    /// (and replays) what is left of the step's token budget in chunks. Under a KV cache limit
    /// the feeds fit the blocks free (blocks of the pool held outside the engine count as
    /// used): when the decoding sequences alone do not fit, or nothing could run, the youngest
    /// sequence holding blocks is preempted ([`Seq::preempt`]); when what is left would fit
    /// but for blocks held outside, nothing runs this step (they come back); a sequence that
    /// cannot fit even alone fails with the reason.
    pub(super) fn plan(
        &self,
        live: &mut Vec<Seq>,
        stats: &mut GenStats,
        on_update: &mut dyn FnMut(Update) -> ControlFlow<()>,
    ) -> Vec<(usize, Vec<u32>)> {
        let Some(limit) = self.sequence_blocks() else {
            return self.feeds(live, None);
        };
        loop {
            let own: usize = live.iter().map(|s| s.cache.blocks_held()).sum();
            // Blocks of the same pool held outside this engine (`distill serve` scoring a
            // prompt beside it): the budget is the pool's, so they count.
            let (pool, free) = self.model.kv_pool_blocks();
            let others = (pool - free).saturating_sub(own);
            let held = own + others;
            let decoding: usize = live
                .iter()
                .filter(|s| s.next.is_some())
                .map(|s| s.blocks_wanted(1))
                .sum();
            if held + decoding <= limit {
                let feeds = self.feeds(live, Some(limit - held - decoding));
                if !feeds.is_empty() || live.is_empty() {
                    return feeds;
                }
            }
            let holders: Vec<usize> = (0..live.len())
                .filter(|&i| live[i].cache.blocks_held() > 0)
                .collect();
            if let [_, .., youngest] = holders[..] {
                if stats.preempted == 0 {
                    tracing::warn!(
                        "the KV cache is full ({limit} blocks of {} positions): pausing the \
                         youngest sequences and recomputing them later (raise `--kv-cache-gib` \
                         or lower `--batch` to avoid it)",
                        BLOCK
                    );
                }
                stats.preempted += 1;
                live[youngest].preempt();
                continue;
            }
            if others > 0 && own + decoding <= limit {
                // What is held outside comes back when its holder finishes: wait for it (the
                // caller steps again) rather than fail a sequence that fits alone.
                std::thread::sleep(std::time::Duration::from_millis(1));
                return Vec::new();
            }
            // One sequence (or none) holds blocks and still cannot go on: it cannot fit alone.
            let seq = live.remove(holders.first().copied().unwrap_or(0));
            let positions = seq.cache.len() + seq.feed(usize::MAX, usize::MAX).len();
            stats.failed += 1;
            let _ = on_update(Update::Failed {
                key: seq.key,
                error: Error::Config(format!(
                    "the sequence needs more than the KV cache's {} at {positions} positions: raise `--kv-cache-gib`, or lower `max_new_tokens` or the prompt",
                    self.blocks_described(limit)
                )),
            });
        }
    }

    /// Every decoding sequence's token, then chunks of prompts (and replays) in order while the
    /// step's token budget lasts and, under a KV cache limit, within `free` blocks beyond
    /// what the decoding sequences need (keeping one block per decoding sequence spare, so a
    /// new prompt is not preempted at once).
    fn feeds(&self, live: &[Seq], mut free: Option<usize>) -> Vec<(usize, Vec<u32>)> {
        let opts = self.options;
        // Decoding sequences always run (one token each); prompts share what budget is left.
        let decoding = live.iter().filter(|s| s.next.is_some()).count();
        let mut budget = opts.step_tokens.max(opts.batch).saturating_sub(decoding);
        let mut out = Vec::with_capacity(live.len());
        for (i, seq) in live.iter().enumerate() {
            if seq.next.is_some() {
                out.push((i, seq.feed(1, 1)));
            } else if budget > 0 {
                let mut feed = seq.feed(budget, opts.prefill_chunk);
                if let Some(free) = &mut free {
                    let room = free.saturating_sub(decoding);
                    let fits = (seq.cache.blocks_held() + room) * BLOCK - seq.cache.len();
                    feed.truncate(fits);
                    *free -= seq.blocks_wanted(feed.len());
                }
                if feed.is_empty() {
                    continue;
                }
                budget -= feed.len();
                out.push((i, feed));
            }
        }
        out
    }
}

/// The KV blocks an engine's sequences may hold: `gib` of them, or with 0 automatically (memory
/// the caches only take as sequences grow): on a GPU 90% of the free memory less 1 GiB for a
/// step's activations, at least half of it; on the CPU's f32 path, whose host buffers count in
/// blocks' worth of positions ([`distill_models::KvCache::blocks_held`]), 80% of the memory
/// the host has available less 1 GiB, at least half of it (the buffers hold up to an eighth
/// more than they count, and the allocator its own); no limit where the free memory is unknown.
pub(super) fn kv_block_limit(model: &Model, gib: f64) -> Result<Option<usize>> {
    const GIB: f64 = (1u64 << 30) as f64;
    let bytes = if gib > 0.0 {
        gib * GIB
    } else if model.uses_kv_pool() {
        match distill_models::device::memory_info(model.device()) {
            // On a nearly full GPU (a trainer's state beside an on-policy sampler) half of
            // what is free rather than nothing.
            Some((free, _)) => (free as f64 * 0.9 - GIB).max(free as f64 * 0.5),
            None => return Ok(None),
        }
    } else {
        match distill_models::device::host_memory_available() {
            Some(free) => (free as f64 * 0.8 - GIB).max(free as f64 * 0.5),
            None => return Ok(None),
        }
    };
    let blocks = (bytes / model.kv_block_bytes() as f64).floor();
    if blocks < 2.0 {
        return Err(Error::Config(format!(
            "a KV cache of {:.2} GiB holds no sequence: {} positions take {:.3} GiB in this model; raise `--kv-cache-gib`{}",
            bytes.max(0.0) / GIB,
            BLOCK,
            model.kv_block_bytes() as f64 / GIB,
            match (gib > 0.0, model.uses_kv_pool()) {
                (true, _) => "",
                (false, true) => " or free GPU memory",
                (false, false) => " or free host memory",
            }
        )));
    }
    Ok(Some(blocks as usize))
}

/// [`Engine::kv_budget_warning`] for `sequences` of `positions` at `per_position` bytes each
/// against a budget of `budget` bytes; `halved`: how the cache could take half as much.
fn kv_budget_warning(
    sequences: usize,
    positions: usize,
    per_position: f64,
    budget: f64,
    halved: Option<&str>,
) -> Option<String> {
    let need = sequences as f64 * positions as f64 * per_position;
    (need > budget).then(|| {
        format!(
            "{sequences} sequence{} of up to {positions} positions could hold {} of keys and \
             values{}, more than the KV cache's {}: if they grow that long the youngest pause \
             and are recomputed later, which costs time",
            if sequences == 1 { "" } else { "s" },
            distill_models::device::size(need),
            halved.map(|h| format!(" ({h})")).unwrap_or_default(),
            distill_models::device::size(budget),
        )
    })
}

#[cfg(test)]
mod tests {
    /// Sequences that could outgrow the KV cache budget are named with the sizes; a batch that
    /// fits says nothing.
    #[test]
    fn a_batch_that_could_outgrow_the_kv_budget_is_named() {
        let gib = (1u64 << 30) as f64;
        let w = super::kv_budget_warning(32, 32768, 24576.0, 20.0 * gib, Some("f16 halves it"))
            .unwrap();
        assert!(
            w.starts_with("32 sequences of up to 32768 positions could hold 24.0 GiB"),
            "{w}"
        );
        assert!(
            w.contains(
                "24.0 GiB of keys and values (f16 halves it), more than the KV cache's 20.0 GiB"
            ),
            "{w}"
        );
        assert!(super::kv_budget_warning(8, 32768, 24576.0, 20.0 * gib, None).is_none());
        let one = super::kv_budget_warning(1, 4096, 24576.0, 0.05 * gib, None).unwrap();
        assert!(one.starts_with("1 sequence of"), "{one}");
        assert!(one.contains("keys and values, more than"), "{one}");
    }
}
