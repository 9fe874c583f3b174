"""The FastAPI app: OpenAI-compatible endpoints, the web page, and the arena.

    GET  /v1/models                   the served checkpoints
    POST /v1/chat/completions         chat (SFT / DPO models), streamed as server-sent events or not
    POST /v1/completions              raw text continuation (any model; the only way to talk to a PT model)
    POST /arena/battles               one prompt for two hidden checkpoints -> a battle id
    POST /arena/battles/{id}/{a|b}    stream side a or b's answer (OpenAI chunks, model name hidden)
    POST /arena/battles/{id}/vote     {"winner": "a" | "b" | "tie"} -> recorded; reveals the two names
    GET  /                            the web page (mini_qwen/web: chat, settings, arena; no CDN)

The arena keeps the answers it generated on the server and writes those to the votes file, so
a vote can only be about text these models really produced for that prompt.
"""

import asyncio
import hmac
import json
import random
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from mini_qwen.chat import encode_prompt
from mini_qwen.serve import protocol as P
from mini_qwen.serve.engine import Engine, Job, ModelSlot, Overloaded, Sampling
from mini_qwen.serve.votes import VoteStore

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
MAX_BATTLES = 512  # battles kept in memory waiting for their vote; the oldest is forgotten first
POLL_S = 0.25  # how often a non-streaming request checks that its client is still there


@dataclass
class Battle:
    prompt: str
    system: str | None
    sampling: Sampling
    models: dict  # side -> model name
    prompt_ids: dict = field(default_factory=dict)  # side -> ids
    answers: dict = field(default_factory=dict)  # side -> finished answer text
    started: set = field(default_factory=set)
    voted: bool = False


class ClientGone(Exception):
    """The client of a non-streamed request disconnected: its generation was cancelled."""


def _error(err: P.ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class ApiKey:
    """Every /v1/ and /arena/ request needs `Authorization: Bearer <key>`; the page and its files are public
    (they hold no model and ask for the key). Plain ASGI, not BaseHTTPMiddleware, whose wrapped `receive`
    would hide a client's disconnect from the endpoint."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(("/v1/", "/arena/")):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error(P.ApiError(401, "missing or wrong API key: send the header 'Authorization: "
                                                  "Bearer <key>' with the key the server was started with "
                                                  "(--api_key).", kind="authentication_error",
                                             code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(slots: dict[str, ModelSlot], votes_dir: str | Path, api_key: str | None = None,
               max_concurrent: int = 1, max_queue: int = 16, defaults: Sampling | None = None) -> FastAPI:
    defaults = defaults or Sampling(max_tokens=256)
    engine = Engine(max_concurrent, max_queue)
    votes = VoteStore(votes_dir)
    battles: OrderedDict[str, Battle] = OrderedDict()
    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.shutdown()

    app = FastAPI(title="mini_qwen", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.votes, app.state.slots = engine, votes, slots

    @app.exception_handler(P.ApiError)
    async def api_error(request: Request, err: P.ApiError):
        return _error(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        what = {404: f"no route {request.method} {request.url.path}: see GET /v1/models, POST /v1/chat/completions, "
                     f"POST /v1/completions", 405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(P.ApiError(err.status_code, what.get(err.status_code, str(err.detail)), code="not_found"
                                 if err.status_code == 404 else None))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone):  # nobody reads it; no stack in the server log
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):  # a bug of ours: one line, no stack to the client
        print(f"internal error on {request.method} {request.url.path}: {type(err).__name__}: {err}", flush=True)
        return _error(P.ApiError(500, f"internal server error: {type(err).__name__}", kind="server_error"))

    if api_key:
        app.add_middleware(ApiKey, key=api_key)

    # ------------------------------------------------------------------ generation plumbing

    def start(slot: ModelSlot, prompt_ids: list[int], sampling: Sampling) -> Job:
        job = Job(slot, prompt_ids, sampling, asyncio.get_running_loop())
        try:
            engine.submit(job)
        except Overloaded as err:
            raise P.ApiError(503, f"the server is busy ({engine.max_concurrent} running, {engine.max_queue} "
                                  f"waiting): retry in {err.retry_after} s.", kind="server_error",
                             code="overloaded", headers={"Retry-After": str(err.retry_after)}) from None
        return job

    async def collect(request: Request, job: Job) -> tuple[str, str, int]:
        """(answer, finish_reason, completion tokens) of a non-streamed job; cancels it if the client leaves."""
        parts, checked = [], time.monotonic()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), POLL_S)
                except asyncio.TimeoutError:
                    event = None
                if time.monotonic() - checked >= POLL_S:  # tokens may arrive faster than POLL_S: check anyway
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        raise ClientGone
                if event is None:
                    continue
                if event[0] == "delta":
                    parts.append(event[1])
                elif event[0] == "done":
                    return "".join(parts), event[1], event[2]
                else:
                    raise P.ApiError(500, event[1], kind="server_error")
        finally:
            job.cancel.set()  # no-op when finished; frees the worker when the client left

    async def stream(job: Job, first, delta, last, usage_chunk, on_done=None):
        """SSE bytes: `first` chunk, one chunk per text delta, the finish chunk, [usage], [DONE]."""
        parts = []
        try:
            if first is not None:
                yield P.sse(first)
            while True:
                event = await job.events.get()
                if event[0] == "delta":
                    parts.append(event[1])
                    yield P.sse(delta(event[1]))
                elif event[0] == "done":
                    if on_done:
                        on_done("".join(parts), event[1])
                    yield P.sse(last(event[1]))
                    if usage_chunk is not None:
                        yield P.sse(usage_chunk(event[2]))
                    yield P.sse("[DONE]")
                    return
                else:
                    yield P.sse(P.ApiError(500, event[1], kind="server_error").body())
                    return
        finally:
            job.cancel.set()  # the client disconnected (generator cancelled) or we are done

    def sse_response(body_iter) -> StreamingResponse:
        return StreamingResponse(body_iter, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ OpenAI endpoints

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": s.created, "owned_by": "mini_qwen",
             "template": s.template, "context_length": s.context} for s in slots.values()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = P.parse_json(await request.body())
        slot = P.pick_model(body, slots)
        messages = P.parse_messages(body)
        is_stream, include_usage = P.parse_stream(body)
        prompt_ids = P.chat_prompt(slot, messages)
        sampling = P.parse_sampling(body, slot, len(prompt_ids), defaults)
        job = start(slot, prompt_ids, sampling)
        rid, n_prompt = P.new_id("chatcmpl"), len(prompt_ids)
        if not is_stream:
            text, finish, n = await collect(request, job)
            return P.chat_response(rid, slot.name, text, finish, n_prompt, n)
        return sse_response(stream(
            job, P.chat_chunk(rid, slot.name, {"role": "assistant", "content": ""}),
            lambda text: P.chat_chunk(rid, slot.name, {"content": text}),
            lambda finish: P.chat_chunk(rid, slot.name, {}, finish),
            (lambda n: P.chat_chunk(rid, slot.name, {}, with_choice=False, usage_counts=P.usage(n_prompt, n)))
            if include_usage else None))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = P.parse_json(await request.body())
        slot = P.pick_model(body, slots)
        is_stream, include_usage = P.parse_stream(body)
        prompt_ids = P.text_prompt(slot, body)
        sampling = P.parse_sampling(body, slot, len(prompt_ids), defaults)
        job = start(slot, prompt_ids, sampling)
        rid, n_prompt = P.new_id("cmpl"), len(prompt_ids)
        if not is_stream:
            text, finish, n = await collect(request, job)
            return P.completion_response(rid, slot.name, text, finish, n_prompt, n)
        return sse_response(stream(
            job, None, lambda text: P.completion_chunk(rid, slot.name, text),
            lambda finish: P.completion_chunk(rid, slot.name, "", finish),
            (lambda n: P.completion_chunk(rid, slot.name, "", with_choice=False, usage_counts=P.usage(n_prompt, n)))
            if include_usage else None))

    # ------------------------------------------------------------------ arena

    def get_battle(battle_id: str) -> Battle:
        battle = battles.get(battle_id)
        if battle is None:
            raise P.ApiError(404, f"no arena battle '{battle_id}' (unknown, or forgotten after {MAX_BATTLES} newer "
                                  f"ones / a server restart): start a new one.", param="battle_id",
                             code="battle_not_found")
        return battle

    @app.post("/arena/battles")
    async def new_battle(request: Request):
        body = P.parse_json(await request.body())
        chat_models = [s.name for s in slots.values() if s.template == "chat"]
        if not chat_models:
            raise P.ApiError(400, "the arena compares chat answers, and every served model is a PT model: serve an "
                                  "SFT or DPO checkpoint.", code="no_chat_model")
        prompt, system = body.get("prompt"), body.get("system") or None
        if not isinstance(prompt, str) or not prompt.strip():
            raise P.ApiError(400, "'prompt' must be a non-empty string: the question both models answer.",
                             param="prompt", code="invalid_value")
        if system is not None and not isinstance(system, str):
            raise P.ApiError(400, "'system' must be a string.", param="system", code="invalid_type")
        pair = body.get("models")
        if pair is None:
            # Two different checkpoints when there are two; with one, two samples of it (that is how
            # preference data is often made: sample twice, keep the better one).
            pair = random.sample(chat_models, 2) if len(chat_models) >= 2 else chat_models * 2
        elif not (isinstance(pair, list) and len(pair) == 2 and all(m in chat_models for m in pair)):
            raise P.ApiError(400, f"'models' must be two of the chat models {chat_models}, got "
                                  f"{json.dumps(pair)[:80]}.", param="models", code="invalid_value")
        else:
            pair = random.sample(pair, 2)  # which side shows which model stays a coin toss
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        sides = {"a": slots[pair[0]], "b": slots[pair[1]]}
        ids = {side: encode_prompt(slot.tokenizer, messages) for side, slot in sides.items()}
        # max_tokens is checked against the smaller of the two contexts.
        tight = min(sides.values(), key=lambda s: s.context - len(ids["a"]))
        sampling = P.parse_sampling(body, tight, len(ids["a"]), defaults)
        if pair[0] == pair[1] and sampling.temperature == 0:
            raise P.ApiError(400, "with one chat model the arena compares two samples of it: set temperature > 0 "
                                  "(greedy decoding gives the same answer twice).", param="temperature",
                             code="invalid_value")
        battle_id = P.new_id("battle")
        battles[battle_id] = Battle(prompt, system, sampling, {s: slot.name for s, slot in sides.items()}, ids)
        while len(battles) > MAX_BATTLES:
            battles.popitem(last=False)
        return {"id": battle_id, "sides": ["a", "b"]}

    # Declared before /{battle_id}/{side}: routes match in order, and "vote" would be taken for a side.
    @app.post("/arena/battles/{battle_id}/vote")
    async def vote(battle_id: str, request: Request):
        body = P.parse_json(await request.body())
        battle = get_battle(battle_id)
        winner = body.get("winner")
        if winner not in ("a", "b", "tie"):
            raise P.ApiError(400, f"'winner' must be \"a\", \"b\" or \"tie\", got {json.dumps(winner)}.",
                             param="winner", code="invalid_value")
        if battle.voted:
            raise P.ApiError(409, "this battle already has a vote: start a new one.", code="already_voted")
        missing = [s for s in ("a", "b") if s not in battle.answers]
        if missing:
            raise P.ApiError(409, f"answer {missing[0]} is not finished yet: wait for both answers, then vote.",
                             code="answers_not_finished")
        if winner != "tie" and battle.answers["a"].strip() == battle.answers["b"].strip():
            raise P.ApiError(409, "the two answers are identical, so neither can be preferred: vote tie or start "
                                  "a new battle.", code="identical_answers")
        empty = [s for s in ("a", "b") if not battle.answers[s].strip()]
        if winner != "tie" and empty:
            raise P.ApiError(409, f"answer {empty[0]} is empty, and DPO cannot train on an empty answer: vote tie "
                                  f"or start a new battle.", code="empty_answer")
        battle.voted = True
        await asyncio.to_thread(votes.add, battle.prompt, battle.system, dict(battle.answers), battle.models, winner)
        return {"recorded": winner, "models": battle.models, "votes": votes.counts(),
                "file": str(votes.path)}

    @app.post("/arena/battles/{battle_id}/{side}")
    async def battle_side(battle_id: str, side: str):
        battle = get_battle(battle_id)
        if side not in ("a", "b"):
            raise P.ApiError(404, f"side '{side}' does not exist: a battle has sides a and b.", param="side")
        if side in battle.started:
            raise P.ApiError(409, f"side {side} of this battle was already generated: start a new battle.",
                             code="already_generated")
        slot = slots[battle.models[side]]
        job = start(slot, battle.prompt_ids[side], battle.sampling)
        battle.started.add(side)
        rid, hidden = P.new_id("chatcmpl"), f"model {side.upper()}"

        def done(text: str, finish: str):
            if finish != "cancelled":
                battle.answers[side] = text

        return sse_response(stream(
            job, P.chat_chunk(rid, hidden, {"role": "assistant", "content": ""}),
            lambda text: P.chat_chunk(rid, hidden, {"content": text}),
            lambda finish: P.chat_chunk(rid, hidden, {}, finish), None, on_done=done))

    # ------------------------------------------------------------------ web page

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/health", include_in_schema=False)
    async def health():
        return {"status": "ok", "models": list(slots), "running_or_waiting": engine.admitted,
                "time": int(time.time())}

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    return app
