"""The allowed range of every numeric flag, in one table, and the check that applies it.

Every script (the stages, mini_qwen_eval.py, mini_qwen_serve.py) checks its numeric flags against RANGES
before anything loads (mini_qwen.cli.parse_args). A light module (no torch, transformers or TRL import):
the server's request checks use it too.
"""

import math
from dataclasses import dataclass

from mini_qwen.errors import MiniQwenError


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric flag: low..high (None: unbounded), ends open or closed, plus exceptions."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()  # single values allowed outside the range (-1 for max_steps, 0 for "off")
    whole_above_one: bool = False  # Trainer's steps: a float below 1 is a fraction, above 1 a whole number

    def allows(self, value) -> bool:
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return not (self.whole_above_one and value > 1 and value != int(value))

    def describe(self) -> str:
        lo = "" if self.low is None else f"{'above' if self.low_open else 'at least'} {self.low:g}"
        hi = "" if self.high is None else f"{'below' if self.high_open else 'at most'} {self.high:g}"
        text = " and ".join(part for part in (lo, hi) if part) or "a finite number"
        if self.whole_above_one:
            text += " (a fraction of all steps below 1, a whole number of steps above)"
        if self.also:
            text = " or ".join(f"{v:g}" for v in self.also) + f" ({self.also_means}), or {text}"
        return text

    @property
    def also_means(self) -> str:
        return "off" if self.also == (0,) else "use num_train_epochs" if self.also == (-1,) else "special"


POSITIVE = Range(1, None)
STEPS = Range(0, None, low_open=True, whole_above_one=True)
# One table for every stage: a flag is checked wherever a stage has it (its own dataclasses and the inherited
# TrainingArguments / SFTConfig / DPOConfig fields). Unset optional flags (None) are not checked.
RANGES: dict[str, Range] = {
    # data and lengths
    "block_size": Range(2, None), "max_length": Range(2, None), "max_prompt_length": POSITIVE,
    "max_pairs": POSITIVE, "dataset_num_proc": Range(1, 1024), "dataloader_num_workers": Range(0, 1024),
    "dataloader_prefetch_factor": POSITIVE,
    # model shape overrides (PT)
    "hidden_size": POSITIVE, "num_hidden_layers": POSITIVE, "num_attention_heads": POSITIVE,
    "num_key_value_heads": POSITIVE, "intermediate_size": POSITIVE,
    # batch and length of training
    "per_device_train_batch_size": POSITIVE, "per_device_eval_batch_size": POSITIVE,
    "gradient_accumulation_steps": POSITIVE, "eval_accumulation_steps": POSITIVE,
    "precompute_ref_batch_size": POSITIVE,
    "max_steps": Range(1, None, also=(-1,)), "num_train_epochs": Range(0, 1e6, low_open=True),
    # optimizer and schedule
    "learning_rate": Range(0, 1, low_open=True), "weight_decay": Range(0, 1), "adam_beta1": Range(0, 1, high_open=True),
    "adam_beta2": Range(0, 1, high_open=True), "adam_epsilon": Range(0, 1, low_open=True),
    "max_grad_norm": Range(0, None), "warmup_steps": Range(0, None, whole_above_one=True),
    "label_smoothing_factor": Range(0, 1, high_open=True), "neftune_noise_alpha": Range(0, None, low_open=True),
    # DPO
    "beta": Range(0, None, low_open=True), "label_smoothing": Range(0, 0.5), "ref_model_sync_steps": POSITIVE,
    "ref_model_mixup_alpha": Range(0, 1), "discopop_tau": Range(0, None, low_open=True), "ld_alpha": Range(0, 1),
    # GRPO: a group needs two answers at least to compare
    "max_prompts": POSITIVE, "filter_samples": POSITIVE, "num_generations": Range(2, None),
    "num_generations_eval": Range(2, None), "max_completion_length": POSITIVE, "generation_batch_size": POSITIVE,
    "steps_per_generation": POSITIVE, "top_k": Range(0, None), "min_p": Range(0, 1), "num_iterations": POSITIVE,
    "epsilon": Range(0, 1, low_open=True), "epsilon_high": Range(0, None, low_open=True),
    "delta": Range(1, None, low_open=True), "top_entropy_quantile": Range(0, 1), "entropy_coef": Range(0, None),
    "entropy_coef_min": Range(0, None), "entropy_coef_max": Range(0, None), "entropy_coef_delta": Range(0, None),
    "entropy_target": Range(0, None), "num_completions_to_print": POSITIVE, "max_tool_calling_iterations": POSITIVE,
    "off_policy_mask_threshold": Range(0, None, low_open=True),
    # LoRA (SFT, DPO, GRPO)
    "lora_r": POSITIVE, "lora_alpha": POSITIVE, "lora_dropout": Range(0, 1, high_open=True),
    # logging, saving, long runs
    "logging_steps": STEPS, "save_steps": STEPS, "eval_steps": STEPS, "eval_delay": Range(0, None),
    "save_total_limit": POSITIVE, "save_every_minutes": Range(0, None),
    "loss_spike_factor": Range(1, None, low_open=True, also=(0,)), "loss_spike_window": Range(1, 1_000_000),
    "max_consecutive_bad_steps": POSITIVE, "lost_rank_timeout": Range(0, None),
    # evaluation (mini_qwen_eval.py)
    "max_new_tokens": POSITIVE, "limit": POSITIVE, "num_fewshot": Range(0, None), "heldout_docs": POSITIVE,
    "ppl_max_length": Range(2, None), "ppl_batch_size": POSITIVE, "repetition_penalty": Range(0, None, low_open=True),
    # serving (mini_qwen_serve.py)
    "port": Range(1, 65535), "max_concurrent": POSITIVE, "max_queue": Range(0, None), "max_tokens": POSITIVE,
    "temperature": Range(0, 2), "top_p": Range(0, 1, low_open=True),
    # the run planner (mini_qwen_plan.py)
    "num_gpus": POSITIVE, "num_nodes": POSITIVE, "price_per_gpu_hour": Range(0, None),
    "mfu": Range(0, 1, low_open=True), "dataset_tokens": POSITIVE, "sample_rows": POSITIVE,
    # processes
    "seed": Range(0, 2**32 - 1), "data_seed": Range(0, 2**32 - 1), "ddp_timeout": POSITIVE,
    "ddp_bucket_cap_mb": POSITIVE, "torch_empty_cache_steps": POSITIVE,
}
# Numeric fields deliberately left to the libraries (tests/test_flags.py fails on a numeric field in neither).
UNCHECKED = {
    "local_rank": "set by the launcher",
    "pad_to_multiple_of": "a positive int or a word: INT_OR_WORDS below",
    "router_aux_loss_coef": "MoE models only",
    "f_alpha_divergence_coef": "any real value is a valid divergence parameter",
    **dict.fromkeys(("vllm_server_port", "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization",
                     "vllm_max_model_length", "vllm_tensor_parallel_size", "vllm_importance_sampling_clip_max",
                     "vllm_importance_sampling_clip_min", "vllm_importance_sampling_cap"),
                    "GRPO with vLLM only; this project generates with transformers"),
    **dict.fromkeys(("sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
                     "vespo_lambda_neg"), "parameters of TRL's sapo / vespo GRPO losses, checked by TRL"),
}


# Flags that take a positive int or one of a few words. TRL converts them itself, failing on a bad one with a bare
# "invalid literal for int()" that names no flag.
INT_OR_WORDS = {"pad_to_multiple_of": ("auto", "none", "null"), "bench_batch_size": ("auto",)}


def _int_or_word_ok(value, words) -> bool:
    if isinstance(value, str):
        return value.lower() in words or (value.isdigit() and int(value) >= 1)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_ranges(values: dict, source=lambda name: "") -> None:
    """Every value whose name is in RANGES (None, unset, is skipped), as one MiniQwenError naming each flag
    out of range and what is allowed."""
    problems = []
    for name, value in values.items():
        words = INT_OR_WORDS.get(name)
        if words and value is not None and not _int_or_word_ok(value, words):
            problems.append(f"--{name} {value}{source(name)} is not allowed: give a positive integer or one of "
                            f"{', '.join(words)}")
        allowed = RANGES.get(name)
        if allowed is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not allowed.allows(value):
            problems.append(f"--{name} {value:g}{source(name)} is out of range: allowed {allowed.describe()}")
    if problems:
        raise MiniQwenError("; ".join(problems) + ".")
