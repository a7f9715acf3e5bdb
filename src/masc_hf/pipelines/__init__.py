"""Diffusers pipelines: ``MASCPipeline`` (LlamaGen + VQ tokenizer + optional MASC cluster map), and
the checks that components belong together (:mod:`masc_hf.pipelines.pairing`)."""

from .labels import ClassLabelError, imagenet_id2label, resolve_class_labels
from .pairing import check_pipeline_components
from .pipeline_masc import MASCPipeline

__all__ = ["ClassLabelError", "MASCPipeline", "check_pipeline_components", "imagenet_id2label", "resolve_class_labels"]
