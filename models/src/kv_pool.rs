//! Key/value caches for generation off the CPU's f32 path (GPUs, bf16), in pages: one pool per
//! model, `[blocks, kv_heads, BLOCK, head_dim]` per layer for keys and for values, and for each
//! sequence the list of its blocks in position order ([`Blocks`], held by its
//! [`crate::KvCache`] and given back when dropped). A sequence takes a block each time it
//! crosses a multiple of [`BLOCK`] positions.
//!
//! Why pages: a pool of equal slots (a slab) must make every slot as long as the longest
//! sequence, so at batch 64 one 16k-token chain of thought among short answers holds 64 × 16k
//! positions; pages hold what the sequences hold, plus less than a block each. Why one pool
//! instead of a tensor per sequence: a step then writes every sequence's new keys with one
//! launch per layer and attends for every decoding sequence at once (the CUDA decode kernel
//! reads each sequence's blocks through its block table), where per-sequence tensors cost a
//! dozen kernel launches per sequence and layer — at batch 64 on a GPU, the launches, not the
//! arithmetic, set the pace.
//!
//! The pool doubles when a sequence needs more blocks than are free (O(log n) copies in a run,
//! a layer's tensor at a time; an engine's KV cache budget caps the doubling,
//! [`KvPool::set_limit`]) and lets go of its tensors when no sequence holds a block, so a
//! server between requests keeps no cache memory.
//! Blocks of 32 positions: a sequence wastes less than 32, and the block table of a 32k-token
//! one is 1,024 ids.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};

use crate::{Result, Spec};

/// Positions a block holds.
pub const BLOCK: usize = 32;
/// Blocks a pool holds at first (it doubles from there).
pub const MIN_BLOCKS: usize = 16;

/// Bytes one block holds for a model of `spec` in `dtype`: keys and values of [`BLOCK`]
/// positions in every layer.
pub fn block_bytes(spec: &Spec, dtype: DType) -> usize {
    2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * BLOCK * dtype.size_in_bytes()
}

/// The blocks a pool grows to for `sequences` sequences at once of up to `positions` positions
/// each: a power of two, at least [`MIN_BLOCKS`]. Memory estimates count caches with this.
pub fn extent(sequences: usize, positions: usize) -> usize {
    (sequences * positions.div_ceil(BLOCK))
        .next_power_of_two()
        .max(MIN_BLOCKS)
}

/// The shared cache tensors of one model.
pub(crate) struct KvPool {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
    state: Mutex<State>,
}

struct State {
    /// Per layer `(keys, values)`, each `[blocks, kv_heads, BLOCK, head_dim]`; empty while no
    /// sequence holds a block.
    tensors: Vec<(Tensor, Tensor)>,
    blocks: usize,
    /// Blocks no sequence holds (taken from the end: the lowest ids first).
    free: Vec<u32>,
    /// Most blocks the pool grows to by doubling (an engine's KV cache budget); past it, it
    /// grows only by what a step needs.
    limit: Option<usize>,
}

/// A sequence's blocks in its model's pool, in position order: block `i` holds positions
/// `i · BLOCK ..`. They go back to the pool when this is dropped.
pub struct Blocks {
    pool: Arc<KvPool>,
    ids: Vec<u32>,
}

impl Blocks {
    pub(crate) fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Whether these are blocks of `pool` (a cache stepped by another model's are not).
    pub(crate) fn is_in(&self, pool: &Arc<KvPool>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }
}

impl fmt::Debug for Blocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blocks({:?})", self.ids)
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        state.free.extend(self.ids.drain(..).rev());
        if state.free.len() == state.blocks {
            // Nobody holds a block: the memory goes back until the next sequence.
            *state = State::empty(state.limit);
        }
    }
}

impl State {
    fn empty(limit: Option<usize>) -> Self {
        Self {
            tensors: Vec::new(),
            blocks: 0,
            free: Vec::new(),
            limit,
        }
    }
}

impl KvPool {
    pub(crate) fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Arc<Self> {
        Arc::new(Self {
            layers,
            kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
            state: Mutex::new(State::empty(None)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new sequence's (empty) list of blocks.
    pub(crate) fn blocks(self: &Arc<Self>) -> Blocks {
        Blocks {
            pool: self.clone(),
            ids: Vec::new(),
        }
    }

    /// Gives `blocks` room for `len` positions, taking free blocks and doubling the pool when
    /// too few are free (up to the limit, [`KvPool::set_limit`]).
    pub(crate) fn reserve(&self, blocks: &mut Blocks, len: usize) -> Result<()> {
        let need = len.div_ceil(BLOCK).saturating_sub(blocks.ids.len());
        if need == 0 {
            return Ok(());
        }
        let mut state = self.lock();
        if state.free.len() < need {
            let held = state.blocks - state.free.len();
            let doubled = (held + need).next_power_of_two().max(MIN_BLOCKS);
            let total = doubled
                .min(state.limit.unwrap_or(usize::MAX))
                .max(held + need);
            self.grow(&mut state, total)?;
        }
        let at = state.free.len() - need;
        blocks.ids.extend(state.free.drain(at..).rev());
        Ok(())
    }

    /// Replaces the tensors by `[blocks, kv, BLOCK, d]` ones holding the old contents, one
    /// tensor at a time: each old tensor goes as soon as its copy exists, so growing takes the
    /// new pool plus one old tensor at most (not the old pool and the new one together, which
    /// near a budget of most of a GPU's memory would not fit). After an allocation fails the
    /// layers copied so far stay larger, unused past `state.blocks`.
    fn grow(&self, state: &mut State, blocks: usize) -> Result<()> {
        let shape = (blocks, self.kv_heads, BLOCK, self.head_dim);
        let fresh = || Tensor::zeros(shape, self.dtype, &self.device);
        if state.tensors.is_empty() {
            state.tensors = (0..self.layers)
                .map(|_| Ok((fresh()?, fresh()?)))
                .collect::<Result<_>>()?;
        } else {
            let kept = state.blocks;
            for (keys, values) in state.tensors.iter_mut() {
                for old in [keys, values] {
                    let new = fresh()?;
                    new.slice_set(&old.narrow(0, 0, kept)?, 0, 0)?;
                    *old = new;
                }
            }
        }
        state
            .free
            .extend((state.blocks as u32..blocks as u32).rev());
        state.blocks = blocks;
        Ok(())
    }

    /// The pool as a step sees it: every layer's tensors.
    pub(crate) fn view(&self) -> PoolView {
        PoolView {
            tensors: self.lock().tensors.clone(),
        }
    }

    /// Caps the pool's doubling at `limit` blocks (`None`: no cap). A caller that keeps its
    /// sequences within the limit never makes the pool larger; one that does not still gets the
    /// blocks it needs, without the doubling's slack.
    pub(crate) fn set_limit(&self, limit: Option<usize>) {
        self.lock().limit = limit;
    }

    /// Blocks the pool holds now, and how many of them are free.
    pub(crate) fn size(&self) -> (usize, usize) {
        let state = self.lock();
        (state.blocks, state.free.len())
    }
}

/// The pool's tensors for one step (taken after the step's blocks are reserved).
pub(crate) struct PoolView {
    pub tensors: Vec<(Tensor, Tensor)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Arc<KvPool> {
        KvPool::new(2, 1, 2, DType::F32, &Device::Cpu)
    }

    /// Blocks are taken as positions cross multiples of [`BLOCK`], the lowest free ids first;
    /// the pool doubles only when too few are free, keeps what it held, and empties when the
    /// last holder lets go.
    #[test]
    fn blocks_come_and_go() {
        let pool = pool();
        let mut a = pool.blocks();
        pool.reserve(&mut a, 1).unwrap();
        assert_eq!(a.ids(), [0]);
        assert_eq!(pool.size(), (MIN_BLOCKS, MIN_BLOCKS - 1));
        pool.reserve(&mut a, BLOCK).unwrap();
        assert_eq!(a.ids(), [0], "still one block");
        pool.reserve(&mut a, BLOCK + 1).unwrap();
        assert_eq!(a.ids(), [0, 1]);
        // Mark a block's contents, then outgrow the pool: the contents move with it.
        let keys = &pool.view().tensors[1].0;
        let mark = Tensor::ones((1, 1, BLOCK, 2), DType::F32, &Device::Cpu).unwrap();
        keys.slice_set(&mark, 0, 1).unwrap();
        let mut b = pool.blocks();
        pool.reserve(&mut b, (MIN_BLOCKS - 2) * BLOCK).unwrap();
        assert_eq!(pool.size(), (MIN_BLOCKS, 0));
        pool.reserve(&mut b, (MIN_BLOCKS - 1) * BLOCK).unwrap();
        assert_eq!(pool.size(), (2 * MIN_BLOCKS, MIN_BLOCKS - 1));
        assert_eq!(b.ids().len(), MIN_BLOCKS - 1);
        assert_eq!(b.ids()[MIN_BLOCKS - 2], MIN_BLOCKS as u32);
        let view = pool.view();
        assert_eq!(view.tensors[1].0.dims(), [2 * MIN_BLOCKS, 1, BLOCK, 2]);
        let moved = view.tensors[1].0.narrow(0, 1, 1).unwrap();
        assert_eq!(moved.sum_all().unwrap().to_scalar::<f32>().unwrap(), 64.0);
        // Given back, then taken again lowest first.
        drop(a);
        assert_eq!(pool.size(), (2 * MIN_BLOCKS, MIN_BLOCKS + 1));
        let mut c = pool.blocks();
        pool.reserve(&mut c, 2 * BLOCK).unwrap();
        assert_eq!(c.ids(), [0, 1]);
        drop((b, c));
        assert_eq!(pool.size(), (0, 0));
        assert!(pool.view().tensors.is_empty());
    }

    /// Under a limit the pool doubles up to it, then grows only by what is needed.
    #[test]
    fn a_limit_caps_the_doubling() {
        let pool = pool();
        pool.set_limit(Some(MIN_BLOCKS + 4));
        let mut a = pool.blocks();
        pool.reserve(&mut a, (MIN_BLOCKS + 1) * BLOCK).unwrap();
        assert_eq!(
            pool.size(),
            (MIN_BLOCKS + 4, 3),
            "capped, not doubled to 32"
        );
        pool.reserve(&mut a, (MIN_BLOCKS + 6) * BLOCK).unwrap();
        assert_eq!(
            pool.size(),
            (MIN_BLOCKS + 6, 0),
            "past the limit: just what is needed"
        );
        drop(a);
        let mut b = pool.blocks();
        pool.reserve(&mut b, 1).unwrap();
        assert_eq!(
            pool.size(),
            (MIN_BLOCKS, MIN_BLOCKS - 1),
            "the limit outlives an empty pool"
        );
    }

    /// The extent memory estimates use: the blocks of every sequence at full length, rounded
    /// up to a power of two.
    #[test]
    fn extent_counts_blocks() {
        assert_eq!(extent(1, 1), MIN_BLOCKS);
        assert_eq!(extent(32, 4096), 32 * 4096 / BLOCK);
        assert_eq!(extent(33, 3000), 4096);
    }
}
