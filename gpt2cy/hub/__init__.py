"""The model hub: model names, the cache, downloads. It turns a name or path into a directory, then calls the
readers (gpt2cy.formats) and the tokenizer (gpt2cy.text), which never import it.

    from gpt2cy import hub
    hub.resolve_model("gpt2-medium")     # -> the cached directory, downloaded on demand
    hub.get_tokenizer("124M")            # -> Tokenizer (only the two vocabulary files are fetched)
"""

_LAZY = {"resolve_model", "resolve_tokenizer", "download_models", "list_models", "get_tokenizer", "canonical_name",
         "models_dir", "model_path"}


def __getattr__(name):
    if name in _LAZY:
        from . import models
        return getattr(models, name)
    raise AttributeError(f"module 'gpt2cy.hub' has no attribute {name!r}")
