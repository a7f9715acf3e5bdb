"""Diffusers pipelines: ``MASCPipeline`` (LlamaGen + VQ tokenizer + optional MASC cluster map)."""

from .labels import ClassLabelError, imagenet_id2label, resolve_class_labels
from .pipeline_masc import MASCPipeline, check_pipeline_components

__all__ = ["ClassLabelError", "MASCPipeline", "check_pipeline_components", "imagenet_id2label", "resolve_class_labels"]
