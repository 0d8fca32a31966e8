//! Settings of the TRL engine (`engine = "trl"` and the `[trl]` table of a train settings file):
//! how many machines and GPUs the job spans, how the model is sharded over them, and what
//! distill's own settings cannot say (LoRA, the Python that runs TRL, the Slurm job).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which trainer runs `distill train`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// distill's own trainer (candle), on one device.
    #[default]
    Distill,
    /// TRL's `SFTTrainer` under `accelerate launch` (PyTorch), on one GPU or many.
    Trl,
}

/// How the model is spread over the job's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distributed {
    /// Every process holds the whole model (data parallel; one process needs no strategy).
    #[default]
    None,
    /// PyTorch FSDP2: parameters, gradients and optimizer states sharded over all processes.
    Fsdp2,
    /// DeepSpeed ZeRO stage 3: parameters, gradients and optimizer states sharded.
    Zero3,
}

impl Distributed {
    pub fn name(self) -> &'static str {
        match self {
            Distributed::None => "none",
            Distributed::Fsdp2 => "fsdp2",
            Distributed::Zero3 => "zero3",
        }
    }

    pub fn shards(self) -> bool {
        self != Distributed::None
    }
}

/// What moves from GPU memory to the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    #[default]
    None,
    /// Optimizer states and the f32 master weights (ZeRO-3 only).
    Optimizer,
    /// Optimizer states and parameters (FSDP2: parameters, gradients and optimizer states).
    All,
}

impl Offload {
    pub fn name(self) -> &'static str {
        match self {
            Offload::None => "none",
            Offload::Optimizer => "optimizer",
            Offload::All => "all",
        }
    }
}

/// The `[trl]` table. Every default is written once, here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrlSettings {
    /// `none` (data parallel), `fsdp2` or `zero3`.
    pub distributed: Distributed,
    /// Machines in the job.
    pub nodes: usize,
    /// GPUs per machine (one process each); CPU runs (`device = "cpu"`) start this many
    /// processes per machine.
    pub gpus_per_node: usize,
    /// `none`, `optimizer` (ZeRO-3) or `all`.
    pub offload: Offload,
    /// Recompute activations in the backward pass instead of keeping them.
    pub activation_checkpointing: bool,
    /// LoRA rank through PEFT; 0 trains every weight.
    pub lora_r: usize,
    /// LoRA scale numerator (default: twice the rank).
    pub lora_alpha: Option<usize>,
    pub lora_dropout: f64,
    /// QLoRA: the frozen base in 4-bit NF4 (bitsandbytes), LoRA adapters on top.
    pub load_in_4bit: bool,
    /// transformers' attention (`sdpa`, `flash_attention_2`, …); default: transformers' choice.
    pub attn_implementation: Option<String>,
    /// The Python that has TRL (default: `$DISTILL_TRL_PYTHON`, else the venv the setup script
    /// makes, `~/.cache/distill-trl-venv/bin/python`).
    pub python: Option<PathBuf>,
    /// Slurm partition (`#SBATCH --partition`).
    pub slurm_partition: Option<String>,
    /// Slurm time limit (`#SBATCH --time`, e.g. `48:00:00`).
    pub slurm_time: Option<String>,
}

impl Default for TrlSettings {
    fn default() -> Self {
        Self {
            distributed: Distributed::None,
            nodes: 1,
            gpus_per_node: 1,
            offload: Offload::None,
            activation_checkpointing: true,
            lora_r: 0,
            lora_alpha: None,
            lora_dropout: 0.05,
            load_in_4bit: false,
            attn_implementation: None,
            python: None,
            slurm_partition: None,
            slurm_time: None,
        }
    }
}

impl TrlSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Processes in the whole job.
    pub fn processes(&self) -> usize {
        self.nodes * self.gpus_per_node
    }

    /// Checks the combinations that cannot work, each in one line naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=4096).contains(&self.nodes),
            "`trl.nodes` must be between 1 and 4096, got `{}`",
            self.nodes
        );
        anyhow::ensure!(
            (1..=64).contains(&self.gpus_per_node),
            "`trl.gpus_per_node` must be between 1 and 64, got `{}`",
            self.gpus_per_node
        );
        anyhow::ensure!(
            !(self.distributed == Distributed::None && self.offload != Offload::None),
            "`trl.offload = \"{}\"` needs `trl.distributed` `zero3` or `fsdp2`",
            self.offload.name()
        );
        anyhow::ensure!(
            !(self.distributed == Distributed::Fsdp2 && self.offload == Offload::Optimizer),
            "FSDP2 offloads parameters and optimizer states together: use `trl.offload = \"all\"` (or `zero3`)"
        );
        anyhow::ensure!(
            !(self.load_in_4bit && self.lora_r == 0),
            "`trl.load_in_4bit` (QLoRA) trains LoRA adapters: set `trl.lora_r`"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.lora_dropout),
            "`trl.lora_dropout` must be in [0, 1), got `{}`",
            self.lora_dropout
        );
        if let Some(alpha) = self.lora_alpha {
            anyhow::ensure!(
                self.lora_r > 0,
                "`trl.lora_alpha` `{alpha}` without `trl.lora_r`"
            );
        }
        Ok(())
    }
}
