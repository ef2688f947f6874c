"""gpt2cy: OpenAI's GPT-2 on the CPU, from the original checkpoint files.

    import gpt2cy
    model = gpt2cy.load("124M")            # or a directory with OpenAI's or HuggingFace's files
    print(model.generate("Hello, my name is", max_new_tokens=20))
"""
from typing import TYPE_CHECKING

from .errors import (CheckpointError, ContextLengthError, DownloadError, GPT2CyError,
                     InvalidTokenError, ModelNotFound, TokenizerError)

__version__ = "0.1.0"

# Heavier pieces load on first use, so `gpt2cy --help` and `import gpt2cy` stay fast.
_LAZY = {
    "load": ("loading", "load"),
    "Model": ("model", "Model"),
    "Config": ("config", "Config"),
    "Tokenizer": ("text.tokenizer", "Tokenizer"),
    "get_tokenizer": ("hub.models", "get_tokenizer"),
    "Chat": ("generation.chat", "Chat"),
    "GenerationChunk": ("generation.loop", "GenerationChunk"),
    "Response": ("generation.response", "Response"),
    "complete": ("generation.loop", "complete"),
    "complete_batch": ("generation.batch", "complete_batch"),
    "generate_batch": ("generation.batch", "generate_batch"),
    "Scheduler": ("generation.scheduler", "Scheduler"),
    "set_notice_handler": ("notices", "set_notice_handler"),
    "verify": ("formats.checkpoint", "verify"),
}

if TYPE_CHECKING:                                    # what type checkers and IDEs see
    from .config import Config
    from .formats.checkpoint import verify
    from .generation.batch import complete_batch, generate_batch
    from .generation.chat import Chat
    from .generation.loop import GenerationChunk, complete
    from .generation.response import Response
    from .generation.scheduler import Scheduler
    from .loading import load
    from .model import Model
    from .notices import set_notice_handler
    from .hub.models import get_tokenizer
    from .text.tokenizer import Tokenizer

__all__ = ["CheckpointError", "ContextLengthError", "DownloadError", "GPT2CyError", "InvalidTokenError",
           "ModelNotFound", "TokenizerError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpt2cy' has no attribute {name!r}")
