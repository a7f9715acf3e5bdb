"""Train LlamaGen (flat, or on a MASC / k-means / any cluster map) or IAR2 from token-code shards.

    accelerate launch recipes/train.py --codes_dir codes/imagenet-256 --output_dir runs/gpt-b-masc \\
        --preset GPT-B-256 --cluster_map maps/masc-8192 --global_batch_size 256
    accelerate launch recipes/train.py --model iar2 --codes_dir codes/imagenet-384-dual --output_dir runs/iar2-b \\
        --preset IAR2-B --vq converted/iar2-vq

This script turns paths and flags into objects (the code shards, the map, a model that fits them, the
VQ tokenizer) and hands them to ``masc_hf.training.train``. ``--help`` lists every option: the fields
of ``RecipeArguments`` below and of ``masc_hf.training.ARTrainingArguments`` (with the paper's
defaults). ``--resume latest`` continues the newest complete checkpoint in --output_dir, with the
settings it was started with (``--allow_changed_settings learning_rate,...`` for the ones that may
change; see ``ARTrainingArguments``). ``--cluster_loss_map DIR [--cluster_loss_weight 1.0]`` trains a
flat model with IAR's cluster-oriented loss over that map's clusters (the model stays flat).
"""

import logging
import sys
from dataclasses import dataclass

from transformers import HfArgumentParser

from masc_hf.errors import MASCError
from masc_hf.training import ARTrainingArguments, train


@dataclass
class RecipeArguments:
    """Where the data and the model come from (``--model_config``/``--init_from`` replace ``--preset``)."""

    codes_dir: str
    model: str | None = None  # llamagen or iar2 (default: iar2 for dual-codebook codes, else llamagen)
    preset: str | None = None  # default GPT-B-256 (LlamaGen) / IAR2-B; vocabulary, classes and block size follow the data and the map
    model_config: str | None = None  # JSON file of LlamaGenConfig (or IAR2Config) fields
    init_from: str | None = None  # a saved model directory, e.g. masc-hf convert-llamagen --cluster-map output
    cluster_map: str | None = None  # train on this map's cluster ids
    cluster_loss_map: str | None = None  # flat model + IAR's cluster CE over this map's clusters (--cluster_loss_weight)
    vq: str | None = None  # the VQModel (IAR2: DualCodebookVQModel) directory: also write a pipeline at the end
    class_dropout_prob: float = 0.1  # for a new model: label dropout, which classifier-free guidance needs
    train_refiner: bool = False  # MASC: train a refinement network (hierarchical decoding; --refiner_mode frozen|joint)
    init_refiner: str | None = None  # a saved refiner to continue from (default: a new one, --refiner_* sizes)
    refiner_width: int = 512  # a new refiner's width (the paper's 512, 4 heads, 1 layer)
    refiner_heads: int = 4
    refiner_layers: int = 1


def load_objects(recipe: RecipeArguments, args: ARTrainingArguments) -> dict:
    """The objects ``train`` takes, from the recipe's paths (each checked as it is read)."""
    from masc_hf.clustering import MASCClusterMap
    from masc_hf.data import CodeShardDataset
    from masc_hf.training import model_for_codes
    from masc_hf.training.trainer import check_cluster_loss

    none = ("", "none", "None")
    paths = {name: (value if value not in none else None) for name, value in vars(recipe).items()}
    cluster_map = MASCClusterMap.from_pretrained(paths["cluster_map"]) if paths["cluster_map"] else None
    cluster_loss_map = MASCClusterMap.from_pretrained(paths["cluster_loss_map"]) if paths["cluster_loss_map"] else None
    refining = recipe.train_refiner or paths["init_refiner"] is not None
    dataset = CodeShardDataset(recipe.codes_dir, cluster_map=cluster_map, seed=args.seed, with_fine_ids=refining and cluster_map is not None)
    # before the VQ and the model are loaded; train() checks again with the model
    check_cluster_loss(cluster_loss_map, args.cluster_loss_weight, train_dataset=dataset, cluster_map=cluster_map)
    vqvae = None
    if paths["vq"]:  # read before the model is built, so that a wrong path fails fast
        from masc_hf.data.extract import load_vqmodel

        vqvae = load_vqmodel(paths["vq"])
    kind = paths["model"] or ("iar2" if dataset.is_dual_codebook else "llamagen")
    preset = paths["preset"] or (None if paths["model_config"] or paths["init_from"] else {"iar2": "IAR2-B"}.get(kind, "GPT-B-256"))
    model = model_for_codes(
        dataset, preset=preset, model_config=paths["model_config"], init_from=paths["init_from"],
        cluster_map=cluster_map, class_dropout_prob=recipe.class_dropout_prob, seed=args.seed, kind=kind,
    )
    refiner = None
    if refining:
        from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig

        if not model.config.is_masc or cluster_map is None:
            raise MASCError("--train_refiner trains a MASC model's refinement network: pass --cluster_map (and --init_from the trained model)")
        if paths["init_refiner"]:
            refiner = MASCRefiner.from_pretrained(paths["init_refiner"])
        else:
            config = MASCRefinerConfig.for_backbone(
                model, hidden_size=recipe.refiner_width, num_attention_heads=recipe.refiner_heads, num_hidden_layers=recipe.refiner_layers
            )
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                refiner = MASCRefiner(config, cluster_map=cluster_map)
    return {
        "model": model, "train_dataset": dataset, "cluster_map": cluster_map, "vqvae": vqvae, "cluster_loss_map": cluster_loss_map,
        "refiner": refiner,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # ARTrainingArguments checks its values when parsed
        recipe, args = HfArgumentParser((RecipeArguments, ARTrainingArguments)).parse_args_into_dataclasses(argv)
        output = train(args=args, **load_objects(recipe, args))
    except MASCError as err:  # bad input: one clear line, no traceback
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    logging.getLogger("train").info("finished at step %d, loss %.4f", output.global_step, output.loss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
