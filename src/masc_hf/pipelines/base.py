"""What every class-conditional pipeline here shares: class names (``id2label``, ``get_label_ids``),
and saving (atomic, with a model card) and uploading to the Hub."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from diffusers import DiffusionPipeline

from .._io import refuse_foreign_files, staged_dir
from ..errors import MASCError
from .labels import imagenet_id2label, label_index, resolve_class_labels


class ClassConditionalPipeline(DiffusionPipeline):
    """Base of :class:`~masc_hf.MASCPipeline` and :class:`~masc_hf.IAR2Pipeline`: a ``transformer``
    whose config has ``num_classes``, an optional ``id2label`` in the pipeline config, a
    ``model_card()``, and ``_OWN_FILES`` (what a save may replace)."""

    _OWN_FILES: frozenset[str] = frozenset({"model_index.json", "README.md", ".gitattributes", "transformer", "vqvae"})

    # ------------------------------------------------------------------ class names
    @property
    def id2label(self) -> dict[int, str]:
        stored = getattr(self.config, "id2label", None)
        if stored:
            return {int(k): v for k, v in stored.items()}
        num_classes = self.transformer.config.num_classes
        if num_classes == 1000:
            return imagenet_id2label()
        config_labels = getattr(self.transformer.config, "id2label", None) or {}
        if len(config_labels) == num_classes and not all(str(v).startswith("LABEL_") for v in config_labels.values()):
            return {int(k): v for k, v in config_labels.items()}
        return {i: f"class {i}" for i in range(num_classes)}

    @property
    def labels(self) -> dict[str, int]:
        """name (and each synonym), lower-cased -> class id."""
        return label_index(self.id2label)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class ids of one name or a list of names, e.g. ``get_label_ids("golden retriever")``."""
        return resolve_class_labels(label, self.id2label, self.transformer.config.num_classes)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """diffusers' save (one folder per component + model_index.json) plus a model card, written
        atomically (a staging directory renamed into place): an interrupted save leaves
        ``save_directory`` as it was. An existing directory is replaced only if it holds nothing but
        a pipeline's files. ``push_to_hub=True`` then uploads it (see :meth:`push_to_hub`)."""
        target = Path(save_directory)
        push = kwargs.pop("push_to_hub", False)
        hub_options = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private", "token", "create_pr") if key in kwargs}
        refuse_foreign_files(target, self._OWN_FILES, "a pipeline", MASCError)
        with staged_dir(target) as staging:
            super().save_pretrained(staging, **kwargs)
            (staging / "README.md").write_text(str(self.model_card()), encoding="utf-8")
        if push:
            repo_id = hub_options.pop("repo_id", target.name)
            self.push_to_hub(repo_id, **hub_options)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None, token=None, create_pr: bool = False, **kwargs):
        """Save the pipeline (with its card) and upload it to the Hub repo ``repo_id``."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=commit_message or f"Upload {type(self).__name__}", create_pr=create_pr
            )

    def model_card(self):  # pragma: no cover - every pipeline defines its card
        raise NotImplementedError
