"""gpt2cy as a model for EleutherAI's lm-evaluation-harness (the optional extra `gpt2cy[eval]`).

    import gpt2cy.evaluation                 # registers the model "gpt2cy" with lm_eval
    import lm_eval
    lm_eval.simple_evaluate(model="gpt2cy", model_args="pretrained=124M,dtype=f32", tasks=["lambada_openai"])

    python -m gpt2cy.evaluation --model gpt2cy --model_args pretrained=124M --tasks lambada_openai
                                             # lm_eval's own command line, with "gpt2cy" registered

lm_eval (0.4.x) finds models only in its registry, filled by importing the module that defines them; it has
no plugin discovery, hence the import. Only this package imports lm_eval; the engine stays numpy-only.
"""
try:
    import lm_eval  # noqa: F401
except ImportError as e:                    # pragma: no cover - depends on the environment
    raise ImportError("gpt2cy.evaluation needs lm-evaluation-harness: pip install 'gpt2cy[eval]' "
                      "(or pip install lm-eval)") from e

from .harness import GPT2CyLM  # noqa: E402

__all__ = ["GPT2CyLM"]
