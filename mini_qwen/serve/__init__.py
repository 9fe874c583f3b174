"""Serving trained checkpoints: an OpenAI-compatible API, a web chat and an arena whose votes become DPO data.

- engine.py: checkpoints loaded once, a bounded queue in front of the generation threads, cancel flags.
- protocol.py: OpenAI request checks (one 4xx error naming the field) and response / chunk shapes.
- votes.py: arena votes appended to an Infinity-Preference parquet file that mini_qwen_dpo.py reads.
- app.py: the FastAPI app tying them together; the page itself is in mini_qwen/web/.
Run it with `python mini_qwen_serve.py results/sft`.
"""
