"""distill's entry point into TRL's supervised fine-tuning (`distill train --engine trl`).

It runs what `trl sft --config recipe.yaml` runs (TRL's `ScriptArguments`, `SFTConfig` and
`ModelConfig` parsed from the same recipe), plus what distill needs from the run:

- every log (loss, learning rate, gradient norm, throughput) goes to stdout as one line
  `distill-metrics {json}` from the main process, which `distill train` turns into its progress
  bar and `metrics.jsonl`;
- a rerun resumes from the newest checkpoint in `output_dir`;
- when the file `distill-stop` appears (distill writes it on Ctrl-C), every process agrees on it
  after the current step, a checkpoint is saved, and the script ends printing `distill-stopped`
  without a final model;
- weight decay leaves the embedding table (and so a tied head) alone, as distill's AdamW does,
  unless `DISTILL_DECAY_EMBEDDINGS=1` (launch.sh sets it from `train.optim.decay_embeddings`);
  transformers decays every weight matrix, so `trl sft --config recipe.yaml` differs here when
  `weight_decay` is not 0;
- the held-out loss is computed at the end when the recipe evaluates no earlier;
- the final model (and tokenizer) is saved to `model/`, a Hugging Face folder that
  `distill compare`, `distill serve` and `transformers` load.

Launched by launch.sh through `accelerate launch`; run it from the folder the recipe is in.
"""

import json
import math
import os
import sys

FINAL_DIR = "model"
METRICS_PREFIX = "distill-metrics "
STOP_FILE = "distill-stop"
STOPPED_LINE = "distill-stopped"
DECAY_EMBEDDINGS_ENV = "DISTILL_DECAY_EMBEDDINGS"


def main():
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import (
        ModelConfig,
        ScriptArguments,
        SFTConfig,
        SFTTrainer,
        TrlParser,
        get_peft_config,
        get_quantization_config,
    )

    class MetricsLines(TrainerCallback):
        """One JSON line per log, from the main process only."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "max_steps": state.max_steps}
            for key, value in logs.items():
                if isinstance(value, float) and not math.isfinite(value):
                    value = None
                record[key] = value
            print(METRICS_PREFIX + json.dumps(record), flush=True)

    class StopFile(TrainerCallback):
        """Checkpoints and stops after the step in which the stop file appeared. Every
        process must stop at the same step (or the others wait in a collective forever), so
        they agree through a max all-reduce of their flags."""

        stopped = False

        def on_step_end(self, args, state, control, **kwargs):
            stop = os.path.exists(STOP_FILE)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                flag = torch.tensor([1.0 if stop else 0.0], device=args.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stop = flag.item() > 0
            if stop:
                self.stopped = True
                control.should_save = True
                control.should_training_stop = True
            return control

    class DistillSFTTrainer(SFTTrainer):
        """TRL's trainer with distill's choice of decayed parameters."""

        def get_decay_parameter_names(self, model):
            names = super().get_decay_parameter_names(model)
            if os.environ.get(DECAY_EMBEDDINGS_ENV, "0") == "1":
                return names
            return [name for name in names if "embed_tokens" not in name]

    stop_file = StopFile()
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    eval_dataset = dataset.get(script_args.dataset_test_split)

    trainer = DistillSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        callbacks=[MetricsLines(), stop_file],
    )

    last = None
    if os.path.isdir(training_args.output_dir):
        last = get_last_checkpoint(training_args.output_dir)
    if last is not None:
        trainer.accelerator.print(f"Resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    if stop_file.stopped:
        # No process leaves while another is still inside the checkpoint's collectives: a
        # process that exits first breaks its peers' connections (seen once as an exit status 1
        # from torchrun after a Ctrl-C on 2 CPU processes).
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.print(STOPPED_LINE, flush=True)
        return 0

    if eval_dataset is not None and training_args.eval_strategy == "no":
        trainer.evaluate(eval_dataset=eval_dataset)  # logged through MetricsLines

    trainer.save_model(FINAL_DIR)
    trainer.accelerator.print(f"Model saved to {FINAL_DIR}")
    if hasattr(trainer, "end"):
        trainer.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
