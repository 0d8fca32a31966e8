//! Memory of one process of a PyTorch training job (the TRL engine under accelerate), where
//! DeepSpeed ZeRO-3 or FSDP2 divide weights, gradients and optimizer states over the
//! processes, LoRA trains only its adapters and QLoRA holds the frozen base in 4 bits.

use distill_models::Spec;

use super::{layer_values, Estimate};

/// One process of a PyTorch training job (TRL under accelerate): how the model is held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sharding {
    /// Processes in the job.
    pub processes: usize,
    /// DeepSpeed ZeRO-3 (`true`) or FSDP2 (`false`) when `sharded`.
    pub zero3: bool,
    /// Weights, gradients and optimizer states divided over the processes.
    pub sharded: bool,
    /// Optimizer states (and ZeRO-3's f32 master weights) in host memory.
    pub offload_optimizer: bool,
    /// Parameters (and FSDP2's gradients) in host memory too.
    pub offload_params: bool,
    /// bf16 compute over f32 master weights (else f32 throughout).
    pub bf16: bool,
    /// The model itself in bf16: weights, gradients and moments all bf16 (DeepSpeed keeps its
    /// f32 master copy regardless).
    pub pure_bf16: bool,
    pub activation_checkpointing: bool,
    /// LoRA rank (0: every weight trains).
    pub lora_r: usize,
    /// QLoRA: the frozen base in 4-bit NF4.
    pub load_in_4bit: bool,
    pub micro_batch: usize,
    pub seq_len: usize,
}

/// Parameters LoRA adds at rank `r` on every linear layer of the decoder (q, k, v, o, gate, up,
/// down): `r × (inputs + outputs)` each.
pub fn lora_parameters(spec: &Spec, r: usize) -> usize {
    let (h, i) = (spec.hidden_size, spec.intermediate_size);
    let (q, kv) = (
        spec.num_heads * spec.head_dim,
        spec.num_kv_heads * spec.head_dim,
    );
    let per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h);
    r * per_layer * spec.num_layers
}

/// Bytes per process. Per parameter, as DeepSpeed and FSDP2 keep them under bf16 mixed
/// precision (16 bytes in all, as in the ZeRO paper): ZeRO-3 keeps bf16 weights (2) and their
/// f32 master copy (4), bf16 gradients (2) and f32 moments (8); FSDP2 keeps f32 weights (4) and
/// gradients (4), cast to bf16 only while a layer computes, and the moments (8). Sharding
/// divides all of it by the processes and adds the gathered working set: the largest unit (a
/// decoder layer or the embedding) twice (the one computing and the one prefetched) in the
/// compute dtype. LoRA keeps the base frozen in bf16 (about 0.55 bytes in 4-bit NF4 with its
/// scales) and trains 16 bytes per adapter parameter. A model loaded in bf16 (`bf16-pure`)
/// keeps 8 bytes per parameter outside ZeRO-3. Activations assume attention through
/// SDPA or FlashAttention (no `seq²` scores kept) and TRL's loss, which never materialises the
/// full logits; with activation checkpointing only each layer's input stays, plus one layer
/// recomputed at a time.
pub fn sharded(spec: &Spec, job: &Sharding) -> Estimate {
    let n = spec.num_parameters() as f64;
    let compute = if job.bf16 { 2.0 } else { 4.0 };
    let shards = if job.sharded {
        job.processes.max(1) as f64
    } else {
        1.0
    };
    let (mut weights, gradients, optimizer) = if job.lora_r > 0 {
        let trainable = lora_parameters(spec, job.lora_r) as f64;
        let frozen = if job.load_in_4bit { 0.55 } else { compute };
        let frozen = if job.offload_params { 0.0 } else { n * frozen };
        let optimizer = if job.offload_optimizer {
            0.0
        } else {
            trainable * 8.0
        };
        (frozen + trainable * 4.0, trainable * 4.0, optimizer)
    } else {
        // (weights, gradients, optimizer) bytes per parameter on the GPU.
        let (w, g, o) = match (job.sharded && job.zero3, job.bf16, job.pure_bf16) {
            (true, true, _) => (6.0, 2.0, 8.0),
            (false, true, true) => (2.0, 2.0, 4.0),
            _ => (4.0, 4.0, 8.0),
        };
        let (w, g, o) = match (job.offload_optimizer, job.offload_params, job.zero3) {
            // ZeRO-3: the optimizer step and its f32 master weights move to the host.
            (true, false, true) => (w - 4.0 * f64::from(job.bf16), g, 0.0),
            (_, true, true) => (0.0, 0.0, 0.0),
            // FSDP2's CPU offload moves parameters, gradients and the optimizer together.
            (_, true, false) => (0.0, 0.0, 0.0),
            _ => (w, g, o),
        };
        (n * w, n * g, n * o)
    };
    weights /= shards;
    if job.sharded {
        let (h, i) = (spec.hidden_size, spec.intermediate_size);
        let (q, kv) = (
            spec.num_heads * spec.head_dim,
            spec.num_kv_heads * spec.head_dim,
        );
        let layer = h * (2 * q + 2 * kv) + 3 * h * i;
        let embedding = spec.vocab_size * h;
        weights += 2.0 * layer.max(embedding) as f64 * compute;
    }
    let tokens = (job.micro_batch * job.seq_len) as f64;
    let layers = spec.num_layers as f64;
    // PyTorch's eager autograd keeps about what candle's composed ops keep.
    let one_layer = tokens * layer_values(spec, false) as f64 * compute;
    let activations = if job.activation_checkpointing {
        layers * tokens * spec.hidden_size as f64 * compute + one_layer
    } else {
        layers * one_layer
    };
    Estimate {
        weights,
        gradients: gradients / shards,
        optimizer: optimizer / shards,
        activations,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::spec;
    use super::*;

    fn job(processes: usize) -> Sharding {
        Sharding {
            processes,
            zero3: true,
            sharded: true,
            offload_optimizer: false,
            offload_params: false,
            bf16: true,
            pure_bf16: false,
            activation_checkpointing: true,
            lora_r: 0,
            load_in_4bit: false,
            micro_batch: 2,
            seq_len: 4096,
        }
    }

    #[test]
    fn sharded_estimates_divide_the_state() {
        let spec = spec();
        let n = spec.num_parameters() as f64;
        // The embedding (151936 × 1536) is the largest unit, gathered twice in bf16.
        let gathered = 2.0 * 151_936.0 * 1536.0 * 2.0;
        let zero3 = sharded(&spec, &job(8));
        assert_eq!(zero3.weights, n * 6.0 / 8.0 + gathered);
        assert_eq!(zero3.gradients, n * 2.0 / 8.0);
        assert_eq!(zero3.optimizer, n);
        // Checkpointed: each layer's input, plus one layer recomputed.
        let tokens = 2.0 * 4096.0;
        let one_layer = tokens * (16.0 * 1536.0 + 6.0 * 8960.0) * 2.0;
        assert_eq!(zero3.activations, 28.0 * tokens * 1536.0 * 2.0 + one_layer);
        let full = sharded(
            &spec,
            &Sharding {
                activation_checkpointing: false,
                ..job(8)
            },
        );
        assert_eq!(full.activations, 28.0 * one_layer);

        let offloaded = sharded(
            &spec,
            &Sharding {
                offload_optimizer: true,
                ..job(8)
            },
        );
        assert_eq!(offloaded.weights, n * 2.0 / 8.0 + gathered);
        assert_eq!(offloaded.optimizer, 0.0);
        let fsdp_all = sharded(
            &spec,
            &Sharding {
                zero3: false,
                offload_optimizer: true,
                offload_params: true,
                ..job(8)
            },
        );
        assert_eq!(
            (fsdp_all.weights, fsdp_all.gradients, fsdp_all.optimizer),
            (gathered, 0.0, 0.0)
        );
        let fsdp = sharded(
            &spec,
            &Sharding {
                zero3: false,
                ..job(16)
            },
        );
        assert_eq!(fsdp.state(), n * 16.0 / 16.0 + gathered);

        let ddp = sharded(
            &spec,
            &Sharding {
                sharded: false,
                ..job(8)
            },
        );
        assert_eq!(
            (ddp.weights, ddp.gradients, ddp.optimizer),
            (n * 4.0, n * 4.0, n * 8.0)
        );
        let pure = sharded(
            &spec,
            &Sharding {
                sharded: false,
                pure_bf16: true,
                ..job(1)
            },
        );
        assert_eq!(pure.state(), n * 8.0);
    }

    #[test]
    fn lora_trains_only_its_adapters() {
        let spec = spec();
        let n = spec.num_parameters() as f64;
        // Per layer: q (1536 → 1536), k and v (1536 → 256), o, gate and up (1536 → 8960), down.
        let per_layer = 3072 + 2 * (1536 + 256) + 3072 + 2 * (1536 + 8960) + (8960 + 1536);
        assert_eq!(lora_parameters(&spec, 16), 16 * per_layer * 28);
        let adapters = lora_parameters(&spec, 16) as f64;
        let lora = sharded(
            &spec,
            &Sharding {
                sharded: false,
                lora_r: 16,
                ..job(1)
            },
        );
        assert_eq!(lora.weights, n * 2.0 + adapters * 4.0);
        assert_eq!(
            (lora.gradients, lora.optimizer),
            (adapters * 4.0, adapters * 8.0)
        );
        let qlora = sharded(
            &spec,
            &Sharding {
                sharded: false,
                lora_r: 16,
                load_in_4bit: true,
                ..job(1)
            },
        );
        assert_eq!(qlora.weights, n * 0.55 + adapters * 4.0);
    }
}
