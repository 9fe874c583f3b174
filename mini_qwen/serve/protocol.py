"""OpenAI request checking and response shapes.

Every request body is checked by hand, field by field, so a bad one gets one OpenAI-style error
(`{"error": {"message", "type", "param", "code"}}`, status 4xx) that names the field and says
what would work, never a 500 or a validation dump.
"""

import json
import time
import uuid

from mini_qwen.serve.engine import ModelSlot, Sampling

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err}); send a JSON object, "
                            f"e.g. {{\"model\": \"sft\", \"messages\": [{{\"role\": \"user\", "
                            f"\"content\": \"hi\"}}]}}.",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}.", code="invalid_json")
    return body


def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}.",
                       param=name, code="invalid_type")
    if (value <= low if low_open else value < low) or value > high:
        lo = f"> {low}" if low_open else f">= {low}"
        raise ApiError(400, f"'{name}' must be {lo} and <= {high}, got {value}.", param=name, code="invalid_value")
    return value


def pick_model(body: dict, slots: dict[str, ModelSlot]) -> ModelSlot:
    name = body.get("model")
    if name is None and len(slots) == 1:  # one model served: naming it is optional
        return next(iter(slots.values()))
    if not isinstance(name, str):
        raise ApiError(400, f"'model' must be one of {sorted(slots)}, got {json.dumps(name)}.", param="model",
                       code="invalid_type" if name is not None else "missing_required_parameter")
    if name not in slots:
        raise ApiError(404, f"the model '{name}' does not exist here: served models are {', '.join(sorted(slots))}.",
                       param="model", code="model_not_found")
    return slots[name]


def parse_messages(body: dict) -> list[dict]:
    """OpenAI `messages` -> [{role, content}] in an order the chat format trained on."""
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "missing 'messages': send a list like [{\"role\": \"user\", \"content\": \"hi\"}].",
                       param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"'messages' must be a non-empty list of {{role, content}} objects, got "
                            f"{json.dumps(messages)[:80]}.", param="messages", code="invalid_type")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'.", param=where,
                           code="invalid_type")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role is {json.dumps(role)}: expected one of {', '.join(ROLES)}.",
                           param=f"{where}.role", code="invalid_value")
        if isinstance(content, list):  # OpenAI's content parts: only text parts can be rendered
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                    f"supported; this model reads text only.", param=f"{where}.content",
                               code="invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string, got {json.dumps(content)[:60]}.",
                           param=f"{where}.content", code="invalid_type")
        if role == "system" and i > 0:
            raise ApiError(400, f"{where} is a system message after the start: the chat format has one system "
                                f"message, first.", param=f"{where}.role", code="invalid_value")
        out.append({"role": role, "content": content})
    body_turns = [m for m in out if m["role"] != "system"]
    for i, m in enumerate(body_turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ApiError(400, f"messages must alternate user / assistant after an optional system message; "
                                f"turn {i} is {m['role']} where {expected} was expected.", param="messages",
                           code="invalid_value")
    if not body_turns or body_turns[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's (the model answers it).", param="messages",
                       code="invalid_value")
    return out


def parse_sampling(body: dict, slot: ModelSlot, prompt_tokens: int, defaults: Sampling) -> Sampling:
    """Sampling settings, with `max_tokens` checked against the model's context."""
    n = _number(body, "n", 1, 1, 1, integer=True)
    del n  # only one answer per request
    room = slot.context - prompt_tokens
    if room < 1:
        raise ApiError(400, f"the prompt is {prompt_tokens} tokens long but model '{slot.name}' has a context of "
                            f"{slot.context} tokens (prompt + answer): shorten the prompt or drop earlier turns.",
                       param="messages", code="context_length_exceeded")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = min(defaults.max_tokens, room)
    else:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise ApiError(400, f"'{name}' must be an integer, got {json.dumps(max_tokens)}.", param=name,
                           code="invalid_type")
        if max_tokens < 1:
            raise ApiError(400, f"'{name}' must be at least 1, got {max_tokens}.", param=name, code="invalid_value")
        if max_tokens > slot.context:
            raise ApiError(400, f"'{name}' is {max_tokens} but model '{slot.name}' has a context of {slot.context} "
                                f"tokens.", param=name, code="invalid_value")
        if max_tokens > room:
            raise ApiError(400, f"the prompt ({prompt_tokens} tokens) + {name} ({max_tokens}) is more than model "
                                f"'{slot.name}''s context of {slot.context} tokens: ask for at most {room}.",
                           param=name, code="context_length_exceeded")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of up to 4 of them, got "
                            f"{json.dumps(body.get('stop'))[:80]}.", param="stop", code="invalid_value")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer, got {json.dumps(seed)}.", param="seed", code="invalid_type")
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", defaults.temperature, 0, 2)),
        top_p=float(_number(body, "top_p", defaults.top_p, 0, 1, low_open=True)),
        repetition_penalty=float(_number(body, "repetition_penalty", defaults.repetition_penalty, 0, 10,
                                         low_open=True)),
        seed=seed, stop=stop)


def parse_stream(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, got {json.dumps(stream)}.", param="stream",
                       code="invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}.",
                       param="stream_options", code="invalid_type")
    return stream, bool(options.get("include_usage"))


def chat_prompt(slot: ModelSlot, messages: list[dict]) -> list[int]:
    """Prompt ids in the training chat format (mini_qwen.chat, the function SFT / DPO / eval use)."""
    from mini_qwen.chat import encode_prompt

    if slot.template == "pt":
        raise ApiError(400, f"model '{slot.name}' is a PT model (raw-text continuation, never trained on the chat "
                            f"format): use POST /v1/completions with a 'prompt'.", param="model",
                       code="model_not_chat")
    return encode_prompt(slot.tokenizer, messages)


def text_prompt(slot: ModelSlot, body: dict) -> list[int]:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "missing 'prompt': the text to continue.", param="prompt",
                       code="missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, f"'prompt' must be a string (one prompt per request), got {json.dumps(prompt)[:60]}.",
                       param="prompt", code="invalid_type")
    if not prompt:
        raise ApiError(400, "'prompt' is empty: give some text to continue.", param="prompt", code="invalid_value")
    return slot.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_response(rid: str, model: str, text: str, finish: str, prompt_tokens: int,
                        completion_tokens: int) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None = None, with_choice: bool = True,
               usage_counts: dict | None = None) -> dict:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if with_choice
             else []}
    if usage_counts is not None:
        chunk["usage"] = usage_counts
    return chunk


def completion_chunk(rid: str, model: str, text: str, finish: str | None = None, with_choice: bool = True,
                     usage_counts: dict | None = None) -> dict:
    chunk = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}] if with_choice
             else []}
    if usage_counts is not None:
        chunk["usage"] = usage_counts
    return chunk


def sse(data) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()

