"""Trainer callbacks shared by all stages: throughput in every log line, a loss PNG at the end."""

import time
from pathlib import Path

from transformers import TrainerCallback

from mini_qwen.hardware import peak_flops
from mini_qwen.trainlog import metric_points


def flops_per_token(config, seq_len: int | None = None) -> float:
    """Training FLOPs per token, as PaLM's appendix B and nanochat count them for MFU: 6 x the matmul parameters
    (the output layer included, tied or not) + 12 x layers x hidden x seq_len for attention's score and value
    matmuls, forward + backward, counted over the whole square as those reports do (so MFU figures compare)."""
    h, L = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    head = h * config.vocab_size  # the output layer is a matmul even when tied
    return 6 * (L * per_layer + head) + (12 * L * h * seq_len if seq_len else 0)


class ThroughputCallback(TrainerCallback):
    """Adds tokens/s (all processes together) and, on known GPUs, MFU to each log line.

    Tokens are counted from Trainer's `num_input_tokens_seen` when it is tracked, else from
    a fixed `tokens_per_step` (packed PT blocks have no padding).
    """

    def __init__(self, model_config, tokens_per_step: int | None = None, seq_len: int | None = None):
        self.fpt = flops_per_token(model_config, seq_len)  # seq_len: PT's fixed blocks (SFT / DPO vary: none)
        self.tokens_per_step = tokens_per_step
        self.peak = peak_flops()
        self.last_time = self.last_tokens = self.last_step = None

    def _tokens(self, state):
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        if seen:
            return seen
        return state.global_step * (self.tokens_per_step or 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_tokens, self.last_step = time.perf_counter(), self._tokens(state), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.last_time is None:
            return
        now, tokens = time.perf_counter(), self._tokens(state)
        dt = now - self.last_time
        if dt <= 0 or tokens <= self.last_tokens:
            return
        tps = (tokens - self.last_tokens) / dt
        extra = {"tokens_per_second": round(tps, 1)}
        if self.peak:
            world = max(args.world_size, 1)
            extra["mfu"] = round(tps * self.fpt / (self.peak * world), 4)
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
        self.last_time, self.last_tokens = now, tokens


class LossPlotCallback(TrainerCallback):
    """Writes `<output_dir>/training_loss.png` from the log history when training ends."""

    def __init__(self, title: str, metrics: tuple[str, ...] = ("loss",)):
        self.title, self.metrics = title, metrics

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from mini_qwen.plotting import plot_loss_curves

        curves = {}
        for name in self.metrics:
            points = metric_points(state, name)
            if points:
                curves[name] = tuple(zip(*points))
        if curves:
            out = Path(args.output_dir) / "training_loss.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                plot_loss_curves(curves, out, title=self.title, xlabel="step")
            except ImportError as err:  # e.g. a GPU image without matplotlib: never lose a run over its plot
                print(f"loss curve skipped ({err}); plot it later with utils/plot_losses.py {args.output_dir}")
                return
            print(f"loss curve: {out}")
