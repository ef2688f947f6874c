"""Generation: sampling (sampling.py, _sampling.pyx), stop strings (stopping.py), the token loop and the
prompt (loop.py), the Response it ends in (response.py), and the chat on top (chat.py).

    from gpt2cy.generation import complete
    r = complete(model, "Hello", max_new_tokens=20, seed=1)     # r.text, r.usage, r.timings, r.to_dict()
"""
from .loop import GenerationChunk, KVCache, Stream, complete, generate, prepare_prompt, stream_generate
from .response import FINISH_REASONS, Response, Timings, Usage

__all__ = ["FINISH_REASONS", "GenerationChunk", "KVCache", "Response", "Stream", "Timings", "Usage", "complete",
           "generate", "prepare_prompt", "stream_generate"]
