"""The package's exception types. Every user-facing failure is one of these, with a one-line message."""


class GPT2CyError(Exception):
    """Base class of every error gpt2cy raises on purpose."""


class CheckpointError(GPT2CyError):
    """A model file is missing, truncated, corrupt, or does not match hparams.json."""


class TokenizerError(GPT2CyError):
    """A vocabulary file is malformed, or a token id is outside the vocabulary."""


class InvalidTokenError(TokenizerError, ValueError):
    """A token id that is not an integer in [0, n_vocab)."""


class ContextLengthError(GPT2CyError, ValueError):
    """A sequence would run past the model's context (n_ctx positions)."""


class ModelNotFound(GPT2CyError):
    """A named model is not in the cache and may not be downloaded (offline, or download=False)."""


class DownloadError(GPT2CyError):
    """A download failed; no partial file was left under the final name."""


class ISAError(GPT2CyError, ImportError):
    """GPT2CY_ISA names a kernel variant this build lacks or this CPU cannot run (gpt2cy/engine/isa.py)."""
