"""What a GRPO plan adds to a training plan (mini_qwen/plan.py): the prompts and answers a run draws, and the
generation's time and memory, which the training passes do not show.

Every figure is estimated unless it says measured:
- Data: prompts counted in the files (measured), their lengths from a sample through the stage's own chat
  rendering (measured on the sample); every answer is planned at --max_completion_length (an upper bound: answers
  that stop earlier cost less).
- Generation time: transformers' generate (this project uses no vLLM) decodes one token of every answer of the
  generation batch a step; a decode step reads every weight once, so it takes the weights' bytes over the GPU's
  memory bandwidth (datasheet figures below) at DECODE_BANDWIDTH_SHARE, but no less than DECODE_STEP_FLOOR_S (the
  kernel launches of one step of a many-layer model in eager PyTorch). The prompts' prefill is counted as
  forward FLOPs at the training MFU. Not measured here on a GPU: treat it as the order of magnitude.
- Generation memory: the KV cache of the generation batch at full length (prompt + answer) in the weights' dtype,
  counted on top of the training peak (conservative: generation and backward do not overlap in time).
"""

from mini_qwen.errors import MiniQwenError
from mini_qwen.plan_data import figure

# Memory bandwidth, bytes/s, from the vendors' datasheets (HBM / GDDR), by mini_qwen.hardware.GPUS name.
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "H800": 3.35e12, "H20": 4.0e12, "A100-80": 2.0e12, "A100-40": 1.555e12,
             "A800": 2.0e12, "L40S": 0.864e12, "L40": 0.864e12, "L4": 0.3e12, "A10": 0.6e12, "RTX4090": 1.008e12,
             "RTX3090": 0.936e12, "V100-32": 0.9e12, "V100-16": 0.9e12, "T4": 0.32e12}
DECODE_BANDWIDTH_SHARE = 0.5
DECODE_STEP_FLOOR_S = 0.02


def grpo_data(data_args, training, tokenizer, sample_rows: int) -> dict:
    """Prompts (files counted whole: prompt sets are small), their lengths from the first `sample_rows` good ones,
    and the answers the run generates (units: answers, num_generations a prompt)."""
    from mini_qwen.data import grpo
    from mini_qwen.data.checks import find_stage_files
    from mini_qwen.data.common import data_options

    options = data_options(data_args)
    files = find_stage_files(grpo.NAME, data_args.data_dir, data_args.data_glob, options, log=lambda *_: None)
    rows = good = 0
    sample = []
    for path in files:
        values = grpo.read_rows(path, options, on_bad_rows="skip")
        problems = grpo.row_problems(values)
        rows += len(problems)
        ok = [p for p, problem in zip(values["prompt"], problems) if problem is None]
        good += len(ok)
        sample += ok[:max(0, sample_rows - len(sample))]
    if not sample:
        raise MiniQwenError(f"no usable prompt (prompt + answer) in '{data_args.data_dir}'.")
    lengths = grpo.prompt_lengths(tokenizer, sample)
    kept = [n for n in lengths if n <= data_args.max_prompt_length]
    share = len(kept) / len(lengths)
    prompts = good * share
    if data_args.max_prompts:
        prompts = min(prompts, data_args.max_prompts)
    answer = training.max_completion_length
    prompt = sum(kept) / len(kept) if kept else data_args.max_prompt_length
    per_answer = prompt + answer
    answers = prompts * training.num_generations
    source = f"a sample of {len(sample)} prompts rendered in the chat format"
    return {"files": figure(len(files), "files", "measured", data_args.data_dir),
            "file bytes": figure(sum(f.stat().st_size for f in files), "bytes", "measured", "file sizes"),
            "rows": figure(rows, "prompts", "measured", "every row read"),
            "prompts": figure(round(prompts), "prompts", "estimated",
                              f"good rows x the share within --max_prompt_length in {source}"
                              + (f", at most --max_prompts {data_args.max_prompts}" if data_args.max_prompts else "")
                              + "; the difficulty filter drops more before training (not planned)"),
            "mean length": figure(round(per_answer, 1), "tokens", "estimated",
                                  f"mean prompt of {source} + --max_completion_length {answer} (an upper bound)"),
            "longest": figure(max(kept or [data_args.max_prompt_length]) + answer, "tokens", "estimated",
                              f"the longest prompt of {source} + --max_completion_length"),
            "units": answers, "unit": "answers", "tokens per unit": per_answer, "trained share": answer / per_answer,
            "tokens": figure(round(answers * per_answer), "tokens", "estimated",
                             f"prompts x --num_generations {training.num_generations} x mean length"),
            "cache bytes": figure(0, "bytes", "measured", "GRPO keeps no token cache")}


def kv_cache_bytes(setup, training, data: dict) -> float:
    """The generation batch's KV cache at full length, in the weights' dtype (bf16 under autocast)."""
    from mini_qwen.plan_memory import DTYPE_BYTES

    c = setup.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    dtype_bytes = DTYPE_BYTES[setup.autocast or setup.weights]
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * dtype_bytes
    answers = setup.batch * generation_steps(training)
    return answers * data["longest"]["value"] * per_token


def generation_steps(training) -> int:
    """Micro-batches one generation batch serves (TRL: steps_per_generation, default the accumulation)."""
    return training.steps_per_generation or training.gradient_accumulation_steps


def generation_time(setup, training, gpu, run: dict, data: dict, mfu: float) -> dict:
    """Seconds of generation per optimizer step and for the run (estimated; see the module docstring)."""
    from mini_qwen.plan_memory import DTYPE_BYTES

    if gpu.name not in BANDWIDTH:
        raise MiniQwenError(f"no memory bandwidth for the {gpu.name} in mini_qwen/plan_grpo.py BANDWIDTH: add its "
                            f"datasheet figure to plan a GRPO run on it.")
    weight_bytes = setup.params.total * DTYPE_BYTES[setup.autocast or setup.weights]
    decode = max(weight_bytes / (BANDWIDTH[gpu.name] * DECODE_BANDWIDTH_SHARE), DECODE_STEP_FLOOR_S)
    answers = setup.batch * setup.grad_accum  # per GPU and optimizer step
    batches = answers / (setup.batch * generation_steps(training))
    prompt_tokens = answers * (data["mean length"]["value"] - training.max_completion_length)
    prefill = prompt_tokens * 2 * setup.params.total / (mfu * gpu.peak_flops)
    per_step = batches * training.max_completion_length * decode + prefill
    steps = run["steps"]["value"]
    return {"seconds per step": figure(round(per_step, 3), "s", "estimated",
                                       f"{training.max_completion_length} decode steps x {decode * 1000:.0f} ms "
                                       f"(weights / ({DECODE_BANDWIDTH_SHARE:g} x {BANDWIDTH[gpu.name] / 1e12:g} "
                                       f"TB/s), at least {DECODE_STEP_FLOOR_S * 1000:g} ms) + prefill"),
            "hours": figure(round(per_step * steps / 3600, 2), "hours", "estimated", "seconds per step x steps")}
