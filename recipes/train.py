"""Train LlamaGen (flat, or on a MASC / k-means / any cluster map) from token-code shards.

    accelerate launch recipes/train.py --codes_dir codes/imagenet-256 --output_dir runs/gpt-b-masc \\
        --preset GPT-B-256 --cluster_map maps/masc-8192 --global_batch_size 256

Every option is a field of ``masc_hf.training.TrainingArguments`` (``--help`` lists them with the
paper's defaults). ``--resume latest`` continues the newest complete checkpoint in --output_dir.
"""

import logging

from transformers import HfArgumentParser

from masc_hf.training import TrainingArguments, train


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
    summary = train(args)
    logging.getLogger("train").info("finished at step %d, loss %.4f", summary["global_step"], summary["loss"])


if __name__ == "__main__":
    main()
