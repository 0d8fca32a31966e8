//! Key/value caches for generation off the CPU's f32 path (GPUs, bf16): one pool per model,
//! `[slots, kv_heads, capacity, head_dim]` per layer for keys and for values, and a slot per
//! sequence ([`Slot`], held by its [`crate::KvCache`] and given back when dropped).
//!
//! Why one pool instead of a tensor per sequence: a decode step then appends every sequence's
//! new keys with one scatter per layer and attends for every decoding sequence at once (one
//! batched matmul over the slots' histories, masked by each slot's length), where per-sequence
//! tensors cost a dozen kernel launches per sequence and layer — at batch 64 on a GPU, the
//! launches, not the arithmetic, set the pace. Capacity doubles when a sequence outgrows it and
//! slots double when every one is taken, so a run copies the pool O(log n) times.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Positions a slot holds at first (it doubles from there).
const MIN_CAPACITY: usize = 256;
/// Slots at first (they double from there).
const MIN_SLOTS: usize = 4;

/// The slots and the capacity a pool grows to for `sequences` sequences at once of up to
/// `positions` positions each: powers of two, at least [`MIN_SLOTS`] and [`MIN_CAPACITY`].
/// Memory estimates count caches with this.
pub fn extent(sequences: usize, positions: usize) -> (usize, usize) {
    (
        sequences.next_power_of_two().max(MIN_SLOTS),
        positions.next_power_of_two().max(MIN_CAPACITY),
    )
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
    /// Per layer `(keys, values)`, each `[slots, kv_heads, capacity, head_dim]`; empty until the
    /// first slot is taken.
    tensors: Vec<(Tensor, Tensor)>,
    slots: usize,
    capacity: usize,
    /// Slots no sequence holds.
    free: Vec<usize>,
}

/// A sequence's place in the pool; the slot goes back to the pool when this is dropped.
pub struct Slot {
    pool: Arc<KvPool>,
    index: usize,
}

impl Slot {
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Whether this is a slot of `pool` (a cache stepped by another model is not).
    pub(crate) fn is_in(&self, pool: &Arc<KvPool>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slot({})", self.index)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.lock().free.push(self.index);
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
            state: Mutex::new(State {
                tensors: Vec::new(),
                slots: 0,
                capacity: 0,
                free: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot, doubling the slots when none is left.
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<Slot> {
        let mut state = self.lock();
        if state.free.is_empty() {
            let (slots, capacity) = extent(state.slots + 1, state.capacity);
            self.grow(&mut state, slots, capacity)?;
        }
        let index = state.free.pop().expect("the pool just grew");
        Ok(Slot {
            pool: self.clone(),
            index,
        })
    }

    /// Makes every slot hold at least `len` positions (doubling the capacity).
    pub(crate) fn reserve(&self, len: usize) -> Result<()> {
        let mut state = self.lock();
        if len > state.capacity {
            let (_, capacity) = extent(1, len);
            let slots = state.slots;
            self.grow(&mut state, slots, capacity)?;
        }
        Ok(())
    }

    /// Replaces the tensors by `[slots, kv, capacity, d]` ones holding the old contents.
    fn grow(&self, state: &mut State, slots: usize, capacity: usize) -> Result<()> {
        let shape = (slots, self.kv_heads, capacity, self.head_dim);
        let grow = |old: &Tensor| -> Result<Tensor> {
            // Two moves, one dimension each (`slice_set` offsets a single dimension): the old
            // slots into a tensor of the new capacity, then that into the new slots.
            let wide = if capacity > state.capacity {
                let wide = Tensor::zeros(
                    (state.slots, self.kv_heads, capacity, self.head_dim),
                    self.dtype,
                    &self.device,
                )?;
                wide.slice_set(old, 2, 0)?;
                wide
            } else {
                old.clone()
            };
            if slots == state.slots {
                return Ok(wide);
            }
            let new = Tensor::zeros(shape, self.dtype, &self.device)?;
            new.slice_set(&wide, 0, 0)?;
            Ok(new)
        };
        state.tensors = if state.tensors.is_empty() {
            (0..self.layers)
                .map(|_| {
                    Ok((
                        Tensor::zeros(shape, self.dtype, &self.device)?,
                        Tensor::zeros(shape, self.dtype, &self.device)?,
                    ))
                })
                .collect::<Result<_>>()?
        } else {
            state
                .tensors
                .iter()
                .map(|(k, v)| Ok((grow(k)?, grow(v)?)))
                .collect::<Result<_>>()?
        };
        state.free.extend((state.slots..slots).rev());
        state.slots = slots;
        state.capacity = capacity;
        Ok(())
    }

    /// The pool as a step sees it: every layer's tensors, the slots and the capacity.
    pub(crate) fn view(&self) -> PoolView {
        let state = self.lock();
        PoolView {
            tensors: state.tensors.clone(),
            slots: state.slots,
            capacity: state.capacity,
        }
    }
}

/// The pool's tensors for one step (taken after the step's slots and capacity are reserved).
pub(crate) struct PoolView {
    pub tensors: Vec<(Tensor, Tensor)>,
    pub slots: usize,
    pub capacity: usize,
}
