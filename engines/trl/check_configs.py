"""Parses the files of TRL jobs that `distill train --engine trl` wrote, with the engines' own
parsers: `recipe.yaml` with TRL's `TrlParser` into `ScriptArguments`, `SFTConfig` and
`ModelConfig` (unknown keys fail), and `accelerate.yaml` with accelerate's config loader.

    python engines/trl/check_configs.py JOB_FOLDER [JOB_FOLDER ...]

Prints one line per folder with the values that matter and exits non-zero on the first folder
that does not parse. On a machine without a GPU the recipe is parsed with `--use_cpu true`
added (transformers refuses `bf16` without a GPU or `use_cpu`; that is about the machine, not
the file). `distill train` does not run this; the project's CI does not run Python.
"""

import os
import sys


def check(folder):
    import torch
    from accelerate.commands.config.config_args import load_config_from_file
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    args = ["--config", "recipe.yaml"]
    if not torch.cuda.is_available():
        args += ["--use_cpu", "true"]

    here = os.getcwd()
    os.chdir(folder)
    try:
        parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
        script, training, model = parser.parse_args_and_config(
            args=args, fail_with_unknown_args=True
        )
        accelerate = load_config_from_file("accelerate.yaml")
    finally:
        os.chdir(here)
    deepspeed = getattr(accelerate, "deepspeed_config", None) or {}
    fsdp = getattr(accelerate, "fsdp_config", None) or {}
    print(
        f"{folder}: ok: model {model.model_name_or_path}, max_length {training.max_length}, "
        f"packing {training.packing}, assistant_only_loss {training.assistant_only_loss}, "
        f"lr {training.learning_rate} ({training.lr_scheduler_type}), "
        f"batch {training.per_device_train_batch_size}x{training.gradient_accumulation_steps}, "
        f"peft {model.use_peft}; accelerate {accelerate.distributed_type} "
        f"{accelerate.num_machines}x{accelerate.num_processes // max(accelerate.num_machines, 1)}, "
        f"mixed_precision {accelerate.mixed_precision}"
        + (f", zero_stage {deepspeed.get('zero_stage')}" if deepspeed else "")
        + (f", fsdp_version {fsdp.get('fsdp_version')}" if fsdp else ""),
        flush=True,
    )


def main(folders):
    if not folders:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    for folder in folders:
        check(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
