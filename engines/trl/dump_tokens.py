"""Writes the training documents exactly as TRL will train on them, for comparison with
distill's own: runs `SFTTrainer`'s data preparation on a job folder of `distill train --engine
trl` (its recipe, data and base model) without training, and prints one JSON line per document
of the train split, `{"input_ids": [...], "labels": [...]}` (labels -100 where no loss is taken).

    python engines/trl/dump_tokens.py JOB_FOLDER > tokens.jsonl

Meant for unpacked jobs (`packing: false`), where a row is a document. `tests/cli_trl_run.rs`
uses it to check that TRL's tokens and label mask equal distill's token cache.
"""

import json
import os
import sys
import tempfile


def main(folder):
    from datasets import load_dataset
    from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser

    os.chdir(folder)
    scratch = tempfile.mkdtemp(prefix="dump-tokens-")
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=["--config", "recipe.yaml", "--use_cpu", "true", "--output_dir", scratch, "--report_to", "none"]
    )
    dataset = load_dataset(script_args.dataset_name)
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
    )
    for row in trainer.train_dataset:
        ids = list(row["input_ids"])
        if "labels" in row:
            labels = list(row["labels"])
        else:
            mask = row.get("assistant_masks") or row.get("completion_mask")
            labels = [t if m else -100 for t, m in zip(ids, mask)]
        record = {"input_ids": ids, "labels": labels}
        if "seq_lengths" in row:
            record["seq_lengths"] = list(row["seq_lengths"])
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
