"""The HTTP routes: OpenAI's /v1 endpoints, llama-server's /tokenize, /detokenize, /health, /metrics, and
the chat page at /. A Starlette app over one Engine; every error is OpenAI's error object.

    GET  /                      the chat page (static/chat.html: one file, nothing from the network)
    GET  /v1/models             {"object": "list", "data": [model]}   (and /v1/models/{id})
    POST /v1/completions        text_completion (stream: data: chunks, then data: [DONE])
    POST /v1/chat/completions   chat.completion (stream: chat.completion.chunk)
    POST /tokenize              {"content": str} -> {"tokens": [int]}
    POST /detokenize            {"tokens": [int]} -> {"content": str}
    GET  /health                200 {"status": "ok", ...}; 503 while shutting down
    GET  /metrics               Prometheus text

With an API key every route but / and /health needs `Authorization: Bearer KEY` (401 otherwise).
A client that goes away cancels its generation (the slot is free at the next step), streamed or not.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import Callable, List, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..errors import InvalidTokenError
from ..hub.models import canonical_name
from . import logprobs as lp
from . import protocol
from .engine import Engine, Job
from .metrics import CONTENT_TYPE
from .protocol import APIError, Envelope, GenerationSpec

log = logging.getLogger("gpt2cy.serve")
MAX_BODY = 16 * 1024 * 1024
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "chat.html")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _Gone(Exception):
    """The client disconnected before the response was ready."""


class _JobStream(StreamingResponse):
    """A streamed response that cancels its job however it ends: also when the client is gone before the
    first chunk (the body's generator then never starts, so its own cleanup never runs)."""

    def __init__(self, content, job: Job, **kw):
        super().__init__(content, **kw)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def create_app(engine: Engine, *, api_key: Optional[str] = None) -> Starlette:
    """The Starlette app serving `engine` (started and stopped by the caller: see server.Server)."""
    model = engine.model
    tok = engine.tokenizer
    fingerprint = f"gpt2cy-{__version__}-{getattr(model, 'dtype', 'f32')}"
    with open(PAGE, "rb") as f:
        page = f.read()

    # -- plumbing
    def check_key(request: Request) -> None:
        if not api_key:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect or missing API key: send 'Authorization: Bearer KEY'",
                           type="invalid_request_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def endpoint(name: str, auth: bool = True):
        def wrap(fn: Callable):
            async def handler(request: Request):
                try:
                    if auth:
                        check_key(request)
                    response = await fn(request)
                except APIError as e:
                    response = error_response(e)
                except Exception as e:             # a bug of ours: still an error object, and logged
                    log.exception("internal error in %s", name)
                    response = error_response(APIError(500, f"internal error: {type(e).__name__}: {e}",
                                                       type="server_error", code="internal_error"))
                engine.metrics.request(name, response.status_code)
                return response
            return handler
        return wrap

    async def read_json(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise APIError(413, f"the request body is {length} bytes; at most {MAX_BODY} are accepted",
                           code="request_too_large")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise APIError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            where = f" ({e.msg} at line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else \
                " (not UTF-8)"
            raise APIError(400, f"could not parse the JSON body of the request{where}", code="invalid_json") \
                from None
        if not isinstance(body, dict):
            raise APIError(400, f"the request body must be a JSON object, got {protocol.kind_of(body)}",
                           code="invalid_json")
        return body

    def check_model(name: Optional[str]) -> None:
        if name is None or name == engine.model_id:
            return
        mine = canonical_name(engine.model_id)
        if mine is not None and canonical_name(name) == mine:
            return
        raise APIError(404, f"the model '{name}' does not exist here (this server serves "
                            f"'{engine.model_id}')", param="model", code="model_not_found")

    async def until_done(job: Job, request: Request) -> None:
        """Wait for every choice; a client that disconnects meanwhile cancels them (raises _Gone)."""
        async def drain():
            async for _ in job.events():
                pass

        async def gone():
            try:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
            except Exception:                      # the connection broke: gone all the same
                pass
        work, watch = asyncio.ensure_future(drain()), asyncio.ensure_future(gone())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
                job.cancel()
        if not work.done() or work.cancelled():
            raise _Gone()
        work.result()                              # a choice's failure is raised here

    def interrupted(job: Job) -> bool:
        return any(h.response is None or h.response.finish_reason == "interrupted" for h in job.handles)

    def usage_of(job: Job) -> dict:
        spec = job.spec
        first = job.handles[::spec.n]
        prompt = sum(len(ids) for ids in spec.prompts)
        completion = sum(h.response.usage.completion_tokens for h in job.handles)
        cached = sum(h.response.usage.cached_tokens for h in first)
        engine.metrics.tokens(prompt, completion)
        return protocol.usage(prompt, completion, cached)

    async def prompt_entries(spec: GenerationSpec) -> List[list]:
        """Echo + logprobs: each prompt's per-token entries (a worker thread waits for the engine)."""
        if not (spec.echo and spec.logprobs is not None):
            return [[] for _ in spec.prompts]
        out = []
        for ids in spec.prompts:
            logits = await run_in_threadpool(engine.score, ids)
            out.append(lp.prompt_entries(logits, ids, spec.logprobs))
        return out

    def shutting_down() -> APIError:
        return APIError(503, "the generation was cancelled: the server is shutting down", type="server_error",
                        code="shutting_down", headers={"Retry-After": "1"})

    # -- whole responses
    def completion_choices(job: Job, entries: List[list]) -> List[dict]:
        spec = job.spec
        out = []
        for idx, h in enumerate(job.handles):
            p = idx // spec.n
            r = h.response
            text = r.text
            logprobs = None
            if spec.logprobs is not None:
                n_rel = lp.released(tok, r.token_ids, len(text))
                ids = (list(spec.prompts[p]) if spec.echo else []) + list(r.token_ids[:n_rel])
                ents = list(entries[p]) + job.recorders[idx].entries[:n_rel]
                logprobs = lp.legacy(tok, ents, ids, lp.Offsets(tok))
            if spec.echo:
                text = spec.prompt_texts[p] + text
            out.append(protocol.completion_choice(idx, text, logprobs, r.finish_reason))
        return out

    def chat_choices(job: Job) -> List[dict]:
        out = []
        for idx, h in enumerate(job.handles):
            r = h.response
            logprobs = None
            if job.spec.logprobs is not None:
                n_rel = lp.released(tok, r.token_ids, len(r.text))
                logprobs = lp.chat(tok, job.recorders[idx].entries[:n_rel])
            out.append(protocol.chat_choice(idx, r.text.lstrip(), logprobs, r.finish_reason))
        return out

    async def whole(request: Request, spec: GenerationSpec, env: Envelope) -> Response:
        entries = await prompt_entries(spec)
        job = engine.submit(spec)
        try:
            await until_done(job, request)
        except _Gone:
            return Response(status_code=499)       # nobody reads it; the generation is cancelled
        if interrupted(job):
            raise shutting_down()
        choices = chat_choices(job) if spec.kind == "chat" else completion_choices(job, entries)
        return JSONResponse(protocol.whole(env, choices, usage_of(job)))

    # -- streamed responses
    def stream(spec: GenerationSpec, env: Envelope, entries: List[list]) -> StreamingResponse:
        job = engine.submit(spec)
        chat = spec.kind == "chat"
        with_usage = spec.include_usage

        def chunk(choices, use=None):
            return _sse(protocol.chunk(env, choices, use, with_usage))

        async def events():
            sent = [0] * len(job.handles)          # logprob entries already sent, per choice
            offsets = [lp.Offsets(tok) for _ in job.handles]
            # an entry is sent once its token's text is released (as lp.released decides for whole responses):
            # the tokens of a stop string, and <|endoftext|>, are held back and never sent
            released_len = [0] * len(job.handles)
            starts = [lp.Offsets(tok) for _ in job.handles]
            head: List[Optional[tuple]] = [None] * len(job.handles)   # (offset, id) of the next unsent entry

            def releasable(idx, entries) -> int:
                n = sent[idx]
                while n < len(entries):
                    if head[idx] is None:
                        tid = entries[n][0]
                        head[idx] = (starts[idx].feed(tid), tid)
                    at, tid = head[idx]
                    if at >= released_len[idx] or tid == tok.eot_token:
                        break
                    head[idx] = None
                    n += 1
                return n
            started = [False] * len(job.handles)   # chat: leading whitespace of the reply dropped
            try:
                for idx in range(len(job.handles)):
                    p = idx // spec.n
                    if chat:
                        yield chunk([protocol.chat_delta(idx, {"role": "assistant", "content": ""}, None, None)])
                    elif spec.echo:
                        logprobs = None
                        if spec.logprobs is not None:
                            logprobs = lp.legacy(tok, entries[p], spec.prompts[p], offsets[idx])
                        yield chunk([protocol.completion_choice(idx, spec.prompt_texts[p], logprobs, None)])
                async for idx, ch in job.events():
                    if ch is None:
                        continue
                    rec = job.recorders[idx]
                    logprobs = None
                    new = []
                    released_len[idx] += len(ch.text)
                    if rec is not None:
                        n_rel = releasable(idx, rec.entries)
                        new = rec.entries[sent[idx]:n_rel]
                        sent[idx] = n_rel
                        if chat:
                            logprobs = lp.chat(tok, new)
                        else:
                            logprobs = lp.legacy(tok, new, [e[0] for e in new], offsets[idx])
                    text = ch.text
                    if chat:
                        if not started[idx]:
                            text = text.lstrip()
                            started[idx] = bool(text)
                        if text or new:
                            yield chunk([protocol.chat_delta(idx, {"content": text}, logprobs, None)])
                        if ch.finish_reason:
                            yield chunk([protocol.chat_delta(idx, {}, None, ch.finish_reason)])
                    elif text or ch.finish_reason or new:
                        yield chunk([protocol.completion_choice(idx, text, logprobs, ch.finish_reason)])
                if interrupted(job):
                    yield _sse(shutting_down().body())
                    return
                if with_usage:
                    yield _sse(protocol.chunk(env, [], usage_of(job), True))
                else:
                    usage_of(job)
                yield "data: [DONE]\n\n"
            except Exception as e:                 # a choice failed mid-stream: say so, in the stream
                log.exception("generation failed")
                yield _sse(protocol.error_body(f"generation failed: {type(e).__name__}: {e}", "server_error",
                                               None, "generation_failed"))
            finally:                               # also on disconnect (the task is cancelled)
                job.cancel()

        return _JobStream(events(), job, media_type="text/event-stream", headers=SSE_HEADERS)

    async def generate(request: Request, spec: GenerationSpec) -> Response:
        check_model(spec.model)
        env = Envelope(protocol.new_id(spec.kind), spec.kind, engine.model_id, fingerprint)
        if spec.stream:
            return stream(spec, env, await prompt_entries(spec))
        return await whole(request, spec, env)

    # -- routes
    @endpoint("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, protocol.parse_completion(await read_json(request), model))

    @endpoint("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, protocol.parse_chat(await read_json(request), model))

    def model_object() -> dict:
        return {"id": engine.model_id, "object": "model", "created": int(engine.metrics.started),
                "owned_by": "openai", "meta": {"n_ctx": int(model.n_ctx), "n_vocab": int(model.config.n_vocab),
                                              "n_slots": int(model.n_slots),
                                              "dtype": str(getattr(model, "dtype", "f32"))}}

    @endpoint("/v1/models")
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_object()]})

    @endpoint("/v1/models/{id}")
    async def one_model(request: Request) -> Response:
        check_model(request.path_params["id"])
        return JSONResponse(model_object())

    @endpoint("/tokenize")
    async def tokenize(request: Request) -> Response:
        body = await read_json(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise protocol.bad("content", f"invalid 'content': expected a string, got {protocol.kind_of(content)}",
                               "invalid_type")
        ids = tok.encode(content)
        if protocol.boolean(body, "with_pieces"):
            return JSONResponse({"tokens": [{"id": i, "piece": lp.token_text(tok, i)} for i in ids]})
        return JSONResponse({"tokens": ids})

    @endpoint("/detokenize")
    async def detokenize(request: Request) -> Response:
        body = await read_json(request)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise protocol.bad("tokens", "invalid 'tokens': expected an array of token ids", "invalid_type")
        try:
            bad_id = next((t for t in ids if not 0 <= t < model.config.n_vocab), None)
            if bad_id is not None:
                raise InvalidTokenError(f"token id {bad_id} is outside the vocabulary [0, {model.config.n_vocab})")
            return JSONResponse({"content": tok.decode(ids)})
        except InvalidTokenError as e:
            raise protocol.bad("tokens", f"invalid 'tokens': {e}") from None

    @endpoint("/health", auth=False)
    async def health(request: Request) -> Response:
        s = engine.stats()
        body = {"status": "shutting down" if engine.draining else "ok", "slots_idle": s["n_slots"] - s["busy_slots"],
                "slots_processing": s["busy_slots"], "queue": s["waiting"], "model": engine.model_id}
        return JSONResponse(body, status_code=503 if engine.draining else 200)

    @endpoint("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(engine.metrics.render(engine.stats(), engine.model_id), media_type=CONTENT_TYPE)

    @endpoint("/", auth=False)
    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            e = APIError(404, f"unknown route: {request.method} {request.url.path}", code="unknown_route")
        elif exc.status_code == 405:
            e = APIError(405, f"method {request.method} is not allowed on {request.url.path}",
                         code="method_not_allowed", headers=dict(exc.headers or {}))
        else:
            e = APIError(exc.status_code, str(exc.detail), code=None)
        engine.metrics.request("other", e.status)
        return error_response(e)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{id:path}", one_model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
