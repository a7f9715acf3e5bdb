"""Diffusers pipelines: ``MASCPipeline`` (LlamaGen + VQ tokenizer + optional MASC cluster map),
``IAR2Pipeline`` (IAR2 + dual-codebook tokenizer), and
the checks that components belong together (:mod:`masc_hf.pipelines.pairing`)."""

from .labels import ClassLabelError, imagenet_id2label, resolve_class_labels
from .pairing import check_pipeline_components
from .pipeline_iar2 import IAR2Pipeline
from .pipeline_masc import MASCPipeline

__all__ = ["ClassLabelError", "IAR2Pipeline", "MASCPipeline", "check_pipeline_components", "imagenet_id2label", "resolve_class_labels"]
