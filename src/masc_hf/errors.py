"""Exceptions raised by masc-hf. All are ``ValueError`` subclasses, so existing
``except ValueError`` handlers keep working; each message names the bad value and the fix."""


class MASCError(ValueError):
    """Base class of every error masc-hf raises for bad input."""


class CodebookError(MASCError):
    """A codebook that cannot be clustered (shape, dtype, NaN/inf, unknown file format)."""


class ClusterMapError(MASCError):
    """A cluster map that is malformed, or a saved map with missing or corrupt files."""


class ClusterMapMismatchError(MASCError):
    """A cluster map paired with a codebook, tokenizer or model it was not built for."""


class CheckpointError(MASCError):
    """An original checkpoint or architecture config that cannot be converted (unknown or missing
    keys, shape mismatch, unsupported or malformed config, unreadable file)."""


class ModelConfigError(MASCError):
    """A LlamaGen configuration whose hyper-parameters do not describe a buildable model."""


class ModelInputError(MASCError):
    """A bad argument to a model's forward or generate (ids out of range, wrong length, bad sampling option)."""


class DataError(MASCError):
    """A data source, image stream, Fashion-MNIST copy or token-code shard directory that cannot be
    read or does not fit the request (missing files, unknown column, settings that contradict a run
    being resumed, shards from another tokenizer)."""
