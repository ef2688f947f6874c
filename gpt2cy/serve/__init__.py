"""`gpt2cy serve`: OpenAI's HTTP API over continuous batching, and a chat page (needs gpt2cy[serve]).

    protocol.py   request bodies -> GenerationSpec (every bad field a 400 naming it); OpenAI's response shapes
    logprobs.py   log-probabilities recorded while sampling; OpenAI's completions and chat logprobs objects
    engine.py     the Engine: one Scheduler and its engine thread; the asyncio bridge (Job); prompt scoring
    metrics.py    counters and the Prometheus text of /metrics
    app.py        the Starlette routes, errors as OpenAI's error object
    server.py     uvicorn on a socket bound first; foreground (signals) or a background thread; shutdown
    static/chat.html  the chat page: one file, no build step, nothing from the network

    from gpt2cy.serve import Server
    with Server(gpt2cy.load("124M", n_slots=4), port=0) as s:
        print(s.url)
"""
from typing import TYPE_CHECKING

__all__ = ["Engine", "Server", "create_app"]

if TYPE_CHECKING:
    from .app import create_app
    from .engine import Engine
    from .server import Server


def __getattr__(name):                    # Starlette and uvicorn load only when the server is used
    if name == "Server":
        from .server import Server
        return Server
    if name == "Engine":
        from .engine import Engine
        return Engine
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module 'gpt2cy.serve' has no attribute {name!r}")
