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
