"""Generation: sampling (sampling.py, _sampling.pyx), stop strings (stopping.py), the token loop and the
prompt (loop.py), the Response it ends in (response.py), the chat on top (chat.py), and many sequences in one
forward a step (scheduler.py: continuous batching; batch.py: generate_batch over a list of prompts).

    from gpt2cy.generation import complete
    r = complete(model, "Hello", max_new_tokens=20, seed=1)     # r.text, r.usage, r.timings, r.to_dict()
"""
from .batch import BatchChunk, BatchStream, complete_batch, generate_batch
from .loop import GenerationChunk, KVCache, Stream, complete, generate, prepare_prompt, stream_generate
from .response import FINISH_REASONS, Response, Timings, Usage
from .scheduler import Handle, Request, Scheduler

__all__ = ["BatchChunk", "BatchStream", "FINISH_REASONS", "GenerationChunk", "Handle", "KVCache", "Request",
           "Response", "Scheduler", "Stream", "Timings", "Usage", "complete", "complete_batch", "generate",
           "generate_batch", "prepare_prompt", "stream_generate"]
