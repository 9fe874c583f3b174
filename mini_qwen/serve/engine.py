"""Loaded checkpoints and the worker threads that generate with them.

Generation is CPU/GPU-bound and one `model.generate` call per model at a time is what the
stage code was written for, so answers are produced by a small thread pool
(`max_concurrent` workers, 1 by default) fed by a bounded queue: a request beyond
`max_concurrent + max_queue` is refused at once (the app answers 503 + Retry-After) instead
of piling up memory and latency. Each job carries a cancel flag that a StoppingCriteria
checks between tokens, so a client that disconnects (or a `stop` string that was reached)
frees its worker after at most one more token.
"""

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mini_qwen.errors import MiniQwenError


@dataclass
class ModelSlot:
    """One loaded checkpoint, served under `name`."""
    name: str
    path: str
    template: str  # "pt" (raw text only) or "chat"
    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    context: int = 0  # longest prompt + answer in tokens (the model's max_position_embeddings)
    created: int = 0


def load_slots(specs: list[str], template: str = "auto", tokenizer_path: str | None = None,
               device: str | None = None, log=print) -> dict[str, ModelSlot]:
    """Every checkpoint loaded once (on the GPU when there is one), by name. All paths are checked
    before the first (slow) load, so a typo in the third one fails in a second."""
    from mini_qwen.checkpoint import check_checkpoint
    from mini_qwen.generate import load_for_inference, named_checkpoints

    checkpoints = named_checkpoints(specs, template)
    for ckpt in checkpoints:
        check_checkpoint(ckpt.path, tokenizer_path, adapter_ok=True)
    slots = {}
    for ckpt in checkpoints:
        model, tokenizer = load_for_inference(ckpt.path, tokenizer_path, device)
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
        slots[ckpt.label] = ModelSlot(ckpt.label, ckpt.path, ckpt.template, model, tokenizer, context, int(time.time()))
        log(f"loaded {ckpt.label} ({ckpt.path}): template {ckpt.template}, context {context} tokens, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters on {model.device}")
    return slots


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


class Overloaded(Exception):
    """The queue is full; `retry_after` is a guess in seconds of when a place frees up."""

    def __init__(self, retry_after: int):
        super().__init__(f"server busy, retry after {retry_after} s")
        self.retry_after = retry_after


class Job:
    """One generation. Events reach the asyncio side through `events`:
    ("delta", text), then ("done", finish_reason, completion_tokens) or ("error", message)."""

    def __init__(self, slot: ModelSlot, prompt_ids: list[int], sampling: Sampling, loop: asyncio.AbstractEventLoop):
        self.slot, self.prompt_ids, self.sampling, self.loop = slot, prompt_ids, sampling, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()  # set by the app (client gone) or by a stop string

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down, nobody listens
            self.cancel.set()


class _TokenSink:
    """A transformers streamer: decodes the answer as tokens arrive and emits the new text.

    Text is sent only when it cannot still change: not while the last token ends inside a
    multi-byte character (U+FFFD), and not the tail that could be the start of a `stop` string.
    """

    def __init__(self, job: Job, stop_ids: set[int]):
        self.job, self.stop_ids = job, stop_ids
        self.ids: list[int] = []
        self.sent = 0  # characters of the answer already emitted
        self.text = ""
        # Decoding the whole answer at every token is quadratic; the text of ids[:done_ids] is kept
        # instead (cut only where a character is complete: byte-level BPE pieces then decode alike).
        self.done_ids, self.done_text = 0, ""
        self.prompt_seen = False
        self.stop_hit = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids or self.stop_hit:
                continue
            self.ids.append(token)
        if self.stop_hit:
            return
        self.text = self._decode()
        stops = self.job.sampling.stop
        for s in stops:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text, self.stop_hit = self.text[:at], True
                self.job.cancel.set()  # ends generate() at the next step
        if self.stop_hit:
            self._flush(len(self.text))
            return
        end = len(self.text)
        if self.text.endswith("\ufffd"):
            end -= 1
        for s in stops:  # hold back a tail that a stop string could begin with
            for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                if self.text[end - k:end] == s[:k]:
                    end -= k
                    break
        self._flush(end)

    def _decode(self) -> str:
        tail = self.job.slot.tokenizer.decode(self.ids[self.done_ids:], skip_special_tokens=True)
        text = self.done_text + tail
        if len(self.ids) - self.done_ids >= 32 and not tail.endswith("\ufffd"):
            self.done_ids, self.done_text = len(self.ids), text
        return text

    def _flush(self, end: int) -> None:
        if end > self.sent:
            self.job.emit("delta", self.text[self.sent:end])
            self.sent = end

    def end(self) -> None:
        if not self.stop_hit:
            self.text = self._decode()
        self._flush(len(self.text))


class Engine:
    """A bounded queue in front of `max_concurrent` generation threads."""

    def __init__(self, max_concurrent: int = 1, max_queue: int = 16):
        if max_concurrent < 1 or max_queue < 0:
            raise MiniQwenError(f"--max_concurrent must be >= 1 and --max_queue >= 0 "
                                f"(got {max_concurrent}, {max_queue}).")
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self.pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="generate")
        self.lock = threading.Lock()
        self.admitted = 0  # running + waiting
        self.seconds_per_job = 2.0  # running mean, for Retry-After

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.admitted >= self.max_concurrent + self.max_queue:
                waiting = self.admitted - self.max_concurrent + 1
                guess = math.ceil(waiting * self.seconds_per_job / self.max_concurrent)
                raise Overloaded(min(max(guess, 1), 60))
            self.admitted += 1
        self.pool.submit(self._run, job)

    def _run(self, job: Job) -> None:
        start = time.monotonic()
        try:
            if job.cancel.is_set():  # the client left while the job was waiting
                job.emit("done", "cancelled", 0)
                return
            self._generate(job)
        except Exception as err:  # a failure inside generation is the server's, said as one line
            job.emit("error", f"generation failed: {type(err).__name__}: {err}")
        finally:
            with self.lock:
                self.admitted -= 1
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.monotonic() - start)

    @staticmethod
    def _generate(job: Job) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from mini_qwen.generate import generate_tokens, stop_token_ids

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), job.cancel.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        slot, s = job.slot, job.sampling
        sink = _TokenSink(job, set(stop_token_ids(slot.tokenizer)))
        new, ended = generate_tokens(slot.model, slot.tokenizer, job.prompt_ids, max_new_tokens=s.max_tokens,
                                     temperature=s.temperature, top_p=s.top_p,
                                     repetition_penalty=s.repetition_penalty, do_sample=s.temperature > 0,
                                     streamer=sink, seed=s.seed, stopping_criteria=StoppingCriteriaList([Cancelled()]))
        if sink.stop_hit or ended:
            reason = "stop"
        elif job.cancel.is_set():
            reason = "cancelled"
        else:
            reason = "length"
        job.emit("done", reason, len(new) + int(ended))  # the <|im_end|> that ended it was generated too

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
