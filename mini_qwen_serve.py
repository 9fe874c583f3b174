"""Serve what you trained: an OpenAI-compatible API, a web chat, and an arena whose votes become DPO data.

Run as:
    python mini_qwen_serve.py results/sft                            # http://127.0.0.1:8000 : chat in the browser
    python mini_qwen_serve.py --checkpoints sft=results/sft dpo=results/dpo   # + arena: SFT vs DPO, names hidden
    python mini_qwen_serve.py results/pt                             # a PT model: /v1/completions (raw text)
    python mini_qwen_serve.py results/sft --port 8001 --api_key secret --votes_dir results/votes
    python mini_qwen_dpo.py --model_name_or_path results/sft --data_dir results/votes   # train on the votes

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (OpenAI's shapes, `stream`
as server-sent events), the page at /, and the arena under /arena/ (see mini_qwen/serve/app.py).
The chat prompt is rendered by mini_qwen/chat.py, the code SFT and DPO train with. Each model is
loaded once (on the GPU when there is one); `--max_concurrent` generations run at once and up to
`--max_queue` more wait, beyond that a request gets 503 with Retry-After.
Binding to anything but 127.0.0.1 / localhost exposes the models to the network: that is your
explicit choice (`--host 0.0.0.0`), best with `--api_key`.
"""

import os
from dataclasses import dataclass, field

from mini_qwen.cli import parse_args
from mini_qwen.errors import MiniQwenError, run_main

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeArguments:
    checkpoints: list[str] = field(default_factory=list, metadata={
        "help": "Checkpoint folders, each `path` or `name=path` (also accepted as positional arguments). The name "
                "is the API's model id. Default: whichever of results/sft, results/dpo exist.", "action": "extend"})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; anything but loopback is reachable "
                                                             "from other machines."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    api_key: str | None = field(default=None, metadata={
        "help": "If set (or env MINI_QWEN_API_KEY), every API request needs 'Authorization: Bearer KEY'."})
    votes_dir: str = field(default="results/votes", metadata={
        "help": "Where arena votes go (votes.parquet, ties.log): pass it to mini_qwen_dpo.py --data_dir."})
    template: str = field(default="auto", metadata={
        "help": "pt (raw text only), chat, or auto (pt when a checkpoint's name or folder says pt).",
        "choices": ["auto", "pt", "chat"]})
    tokenizer_path: str | None = field(default=None, metadata={
        "help": "Tokenizer folder for checkpoints saved without one (e.g. models/tokenizer)."})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda; default cuda when available."})
    max_concurrent: int = field(default=1, metadata={
        "help": "Generations running at once (1 suits a CPU: two would share its cores and both be slower)."})
    max_queue: int = field(default=16, metadata={"help": "Requests allowed to wait; more get 503 + Retry-After."})
    max_tokens: int = field(default=256, metadata={"help": "Answer length when a request gives no max_tokens."})
    temperature: float = field(default=0.7, metadata={"help": "Default temperature (0 = greedy)."})
    top_p: float = field(default=0.9, metadata={"help": "Default nucleus sampling threshold."})


def main(argv=None):
    (args,) = parse_args((ServeArguments,), argv, positional="checkpoints")
    from pathlib import Path

    specs = args.checkpoints or [p for p in ("results/sft", "results/dpo") if Path(p).exists()]
    if not specs:
        raise MiniQwenError("no checkpoint given and neither results/sft nor results/dpo exists: pass one, e.g. "
                            "python mini_qwen_serve.py results/sft (or --checkpoints sft=results/sft dpo=results/dpo).")
    api_key = args.api_key or os.environ.get("MINI_QWEN_API_KEY") or None

    import uvicorn

    from mini_qwen.serve.app import create_app
    from mini_qwen.serve.engine import Sampling, load_slots

    slots = load_slots(specs, args.template, args.tokenizer_path, args.device)
    app = create_app(slots, args.votes_dir, api_key, args.max_concurrent, args.max_queue,
                     Sampling(args.max_tokens, args.temperature, args.top_p))
    host = f"[{args.host}]" if ":" in args.host else args.host
    if args.host not in LOOPBACK:
        print(f"note: binding to {args.host}: other machines can reach these models"
              + ("" if api_key else " and no --api_key is set"), flush=True)
    url = f"http://{host}:{args.port}"
    ready = (f"serving {', '.join(slots)} at {url}/ (OpenAI base_url {url}/v1); "
             f"arena votes -> {Path(args.votes_dir) / 'votes.parquet'}")

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:  # listening now: the URL works the moment it is printed
                print(ready, flush=True)

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                   timeout_graceful_shutdown=2))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled once it has shut down cleanly
        pass
    except SystemExit:  # uvicorn could not bind and said why (port taken, address not on this machine)
        raise MiniQwenError(f"cannot listen on {args.host}:{args.port}: pick another --port or --host.") from None
    print("server stopped", flush=True)


if __name__ == "__main__":
    run_main(main)
