"""Renamed to :mod:`masc_hf.vq` (``tokenizers`` reads as Hugging Face's text tokenizers package).
This alias stays for one release: its names and submodules are those of ``masc_hf.vq``."""

import importlib
import warnings

warnings.warn("masc_hf.tokenizers is now masc_hf.vq; the old name goes in the next release", FutureWarning, stacklevel=2)


def __getattr__(name: str):
    return getattr(importlib.import_module("masc_hf.vq"), name)
