//! Where the CPU's parallel maths runs: on the threads of rayon's global pool.
//!
//! Every parallel op (candle's matmuls, the GGUF kernels, the decode attention) called from a
//! thread outside the pool hands its work to the pool and sleeps until it is done: two context
//! switches and a wake-up per op. A decode step is hundreds of small ops (SmolLM2 at batch 1:
//! ~9 per layer × 30 layers), so from the main thread most of a step went to the scheduler.
//! [`on_workers`] moves a whole step onto a pool thread once; its ops then split their work
//! in place, and the other threads take their shares without a hand-over. Only CPU work goes
//! there: a GPU step queues kernels from the thread that made its context current.

use candle_core::Device;

/// Runs `work` for `device`: on the CPU on a thread of rayon's global pool (right here when
/// this already is one), elsewhere on this thread; returns its result. For pure computation
/// only: `work` must not wait on another thread that itself needs the pool (with `--threads 1`
/// the pool's only thread would be the one waiting).
pub fn on_workers<R: Send>(device: &Device, work: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        // `scope` runs its body on a pool thread (rayon's `in_worker`), inline when called
        // from one.
        rayon::scope(|_| work())
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    #[test]
    fn cpu_work_runs_on_a_pool_thread_and_nests_in_place() {
        assert!(rayon::current_thread_index().is_none(), "the test thread");
        let (outer, inner) = super::on_workers(&Device::Cpu, || {
            let outer = rayon::current_thread_index();
            let inner = super::on_workers(&Device::Cpu, rayon::current_thread_index);
            (outer, inner)
        });
        assert!(outer.is_some(), "on a pool thread");
        assert_eq!(outer, inner, "nested work stays on its thread");
    }
}
