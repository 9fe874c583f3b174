"""Reinforcement learning with verifiable rewards (GRPO): the chat model answers each prompt several times, Python
rewards score the answers against the reference, and the model moves towards the better answers of each group.

Run as:
    python mini_qwen_grpo.py                                 # one GPU (or CPU), prompts in data/grpo, from results/sft
    accelerate launch --config_file accelerate_config.yaml mini_qwen_grpo.py
    nohup accelerate launch --config_file accelerate_config.yaml mini_qwen_grpo.py > logs/output_grpo.log 2>&1 &
    python demo/demo_grpo.py                                 # on mini_data/grpo, from the demo SFT model
    python mini_qwen_grpo.py --model_name_or_path results/dpo --use_peft true   # a LoRA adapter, from DPO
    python mini_qwen_grpo.py --reward_funcs math format length

GRPO (TRL's GRPOTrainer, DeepSeekMath's method): for each prompt, --num_generations answers are sampled; each
answer's advantage is its summed reward minus the group's mean (over the group's std); the policy gradient pushes
up the better-than-average answers, with a KL penalty (--beta) towards the starting model. Generation runs on the
training model itself (transformers' generate, no vLLM), so it works on a CPU too, slowly.

Data: .jsonl or .parquet files of `prompt` + `answer` (mini_qwen/data/grpo.py); rewards: mini_qwen/rewards/
(--reward_funcs; one function adds one). Before training, the difficulty filter samples --filter_samples answers
per prompt from the starting model and drops the prompts it always or never gets right (--filter_reward): their
groups would all score alike and teach nothing. When to use GRPO rather than DPO: README "GRPO".
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from transformers import set_seed
from trl import GRPOConfig, GRPOTrainer

from mini_qwen import stages
from mini_qwen.callbacks import LossPlotCallback, ThroughputCallback
from mini_qwen.checkpoint import resume_checkpoint
from mini_qwen.cli import parse_args
from mini_qwen.data.checks import find_stage_files
from mini_qwen.data.common import ON_BAD_ROWS, data_options
from mini_qwen.data.files import DEFAULT_GLOB
from mini_qwen.data.grpo import build_dataset
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.launch import check_launch
from mini_qwen.long_run import LongRunArguments, with_long_run
from mini_qwen.lora import (
    LoraArguments,
    describe_adapter,
    keep_adapters_fp32,
    lora_setup,
    quantization_config,
    with_base_path,
)
from mini_qwen.model import ModelArguments, describe, load_model, load_stage_tokenizer
from mini_qwen.rewards import known, reward_funcs
from mini_qwen.run_config import record_run
from mini_qwen.speed import kahan_adamw
from mini_qwen.tracking import track_run
from mini_qwen.trainlog import first_and_last_loss, last_metric

STAGE = stages.stage("grpo")
FILTER_FILE = "difficulty_filter.json"  # in output_dir: the prompts kept, reused on resume


@dataclass
class GRPODataArguments:
    data_dir: str = field(default="data/grpo", metadata={"help": "Folder (or one file) of prompts with columns "
                                                                 "prompt + answer, in any format of the reader layer "
                                                                 "(jsonl, parquet, csv, ...)."})
    data_glob: str = field(default=DEFAULT_GLOB, metadata={"help": "Which files under data_dir to use."})
    columns: str | None = field(default=None, metadata={
        "help": "Map the file's column names to GRPO's: NAME=COLUMN pairs separated by commas, e.g. "
                "--columns prompt=question,answer=final."})
    max_prompt_length: int = field(default=256, metadata={"help": "Longest prompt in tokens (chat headers "
                                                                  "included); longer ones are skipped, not cut."})
    on_bad_rows: str = field(default="skip", metadata={"help": "skip (and count) or error on bad prompts (no "
                                                               "reference answer, empty prompt).",
                                                       "choices": list(ON_BAD_ROWS)})
    max_prompts: int | None = field(default=None, metadata={"help": "Train on the first N usable prompts only "
                                                                    "(demos and smoke tests). Default: all."})
    reward_funcs: list[str] = field(default_factory=lambda: ["math", "format"], metadata={
        "help": "The rewards summed for each answer, by name (mini_qwen/rewards/): " + ", ".join(known()) + "."})
    difficulty_filter: bool = field(default=True, metadata={
        "help": "Before training, sample --filter_samples answers per prompt from the starting model and drop the "
                "prompts all right or all wrong by --filter_reward (their groups teach nothing)."})
    filter_samples: int = field(default=4, metadata={"help": "Answers sampled per prompt by the difficulty filter."})
    filter_reward: str = field(default="math", metadata={
        "help": "The reward that decides right (>= 1) or wrong for the difficulty filter."})


@dataclass
class GRPOModelArguments(ModelArguments):
    model_name_or_path: str | None = field(default="results/sft", metadata={
        "help": "The chat model to train (an SFT or DPO output); a frozen copy is the KL reference."})


@dataclass
class MiniGRPOConfig(LongRunArguments, GRPOConfig):
    # No original run to copy: DeepSeekMath's GRPO values scaled to this project (lr 1e-6, 8 answers a prompt,
    # KL 0.04), TRL's loss.
    output_dir: str = field(default="results/grpo", metadata={"help": "Checkpoints, final model, reward plot."})
    learning_rate: float = field(default=1e-6, metadata={"help": "DeepSeekMath's GRPO value."})
    # --learning_rate's default under --use_peft true: 10x the full rate, as for SFT and DPO (mini_qwen/lora.py)
    lora_learning_rate: ClassVar[float] = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: float = field(default=0, metadata={"help": "A float below 1 is a fraction of all steps."})
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = field(default=8, metadata={
        "help": "Answers (not prompts) per process per micro-batch; a step's answers must hold whole groups of "
                "--num_generations."})
    gradient_accumulation_steps: int = 1
    num_generations: int | None = field(default=8, metadata={
        "help": "Answers sampled per prompt (the group GRPO compares); at least 2."})
    max_completion_length: int | None = field(default=256, metadata={"help": "Longest generated answer in tokens."})
    beta: float = field(default=0.04, metadata={
        "help": "KL penalty towards the starting model (DeepSeekMath: 0.04). Above 0 here: the bad-step guard "
                "watches that KL."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the answers."})
    save_strategy: str = "steps"
    save_steps: float = 100
    save_total_limit: int = 3
    logging_steps: float = 10
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})


# The flags by role, in the order main parses them (the planner and tests read this, as TRL scripts' make_parser).
ARGUMENTS = {"data": GRPODataArguments, "model": GRPOModelArguments, "lora": LoraArguments,
             "training": MiniGRPOConfig}


def check_args(data_args, model_args, training_args) -> list:
    """The GRPO flags that cannot work together, before anything loads. Returns the reward functions."""
    if not training_args.beta > 0:
        raise MiniQwenError("--beta must be above 0: the reference model's KL keeps the policy near the starting "
                            "model and is what the bad-step guard watches (try 0.04).")
    if not training_args.max_completion_length:
        raise MiniQwenError("--max_completion_length must be set (the answer budget in tokens, e.g. 256).")
    if data_args.difficulty_filter and data_args.filter_samples < 2:
        raise MiniQwenError(f"--filter_samples {data_args.filter_samples}: the difficulty filter needs at least 2 "
                            f"answers per prompt to see both right and wrong.")
    context = {"max_completion_length": training_args.max_completion_length}
    rewards = reward_funcs(data_args.reward_funcs, context)
    if data_args.difficulty_filter:
        reward_funcs([data_args.filter_reward], context, flag="--filter_reward")
    return rewards


def check_start(model_path: str, tokenizer, max_length: int) -> None:
    """The starting checkpoint is a chat model and generation fits its context."""
    config_file = Path(model_path) / "run_config.json"
    if config_file.is_file():
        started = json.loads(config_file.read_text()).get("stage")
        if started in stages.BY_NAME and not stages.stage(started).chat:
            raise MiniQwenError(f"--model_name_or_path {model_path} is a {started.upper()} model (its run_config.json "
                                f"says stage {started!r}): it has never seen the chat format the prompts use. Start "
                                f"GRPO from an SFT or DPO output (e.g. results/sft).")
    # The loaded tokenizer always carries the training template (mini_qwen.tokenizer.load_tokenizer sets it), so the
    # folder itself says whether the model was saved as a chat model: a checkpoint from elsewhere without run_config
    # and without any template on disk is a base (PT) model.
    saved = Path(model_path)
    config = saved / "tokenizer_config.json"
    if not config_file.is_file() and not (saved / "chat_template.jinja").is_file() and not (
            config.is_file() and json.loads(config.read_text()).get("chat_template")):
        raise MiniQwenError(f"--model_name_or_path {model_path}: its tokenizer has no chat template, so it is not a "
                            f"chat model. Start GRPO from an SFT or DPO output (e.g. results/sft).")
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(model_path).max_position_embeddings
    if max_length > context:
        raise MiniQwenError(f"--max_prompt_length + --max_completion_length = {max_length} tokens is longer than the "
                            f"model's context ({context}, {model_path}/config.json): lower one of them.")


def sample_answers(model, tokenizer, prompts: list[str], k: int, max_new_tokens: int, temperature: float,
                   batch_prompts: int = 8) -> list[list[str]]:
    """`k` sampled answers to each (chat-format) prompt, as the trainer would sample them."""
    import torch

    out = []
    was_training = model.training
    model.eval()
    pad_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(prompts), batch_prompts):
            batch = tokenizer(prompts[start:start + batch_prompts], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            with torch.no_grad():
                ids = model.generate(**batch, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                     num_return_sequences=k, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [texts[i:i + k] for i in range(0, len(texts), k)]
    finally:
        tokenizer.padding_side = pad_side
        model.train(was_training)
    return out


def difficulty_counts(scores: list[list[float]]) -> dict:
    """Which prompts to keep from each prompt's sampled answers' filter-reward scores (right: >= 1)."""
    right = [sum(s >= 1 for s in row) for row in scores]
    return {"keep": [i for i, (r, row) in enumerate(zip(right, scores)) if 0 < r < len(row)],
            "all right": sum(r == len(row) for r, row in zip(right, scores)),
            "all wrong": sum(r == 0 for r in right)}


def difficulty_filter(dataset, model, tokenizer, data_args, training_args, log=print):
    """The prompts the starting model sometimes but not always gets right. Every process samples its share of the
    prompts and all of them keep the same set; the result is written to output_dir/difficulty_filter.json and
    read back on resume, so a resumed run trains on the same prompts without sampling again."""
    import torch

    saved = Path(training_args.output_dir) / FILTER_FILE
    if training_args.resume_from_checkpoint and saved.is_file():
        kept = json.loads(saved.read_text())
        if kept["rows"] and set(kept["rows"]) <= set(dataset["row"]):
            wanted = set(kept["rows"])
            log(f"difficulty filter: {len(wanted)} prompts kept when the run started ({saved})")
            return dataset.filter(lambda r: r["row"] in wanted)
    scorer = reward_funcs([data_args.filter_reward], {"max_completion_length": training_args.max_completion_length},
                          flag="--filter_reward")[0]
    rank, world = training_args.process_index, training_args.world_size
    mine = list(range(rank, len(dataset), world))
    set_seed(training_args.seed + rank)
    answers = sample_answers(model, tokenizer, [dataset[i]["prompt"] for i in mine], data_args.filter_samples,
                             training_args.max_completion_length, training_args.temperature)
    scores = {i: [scorer.score(a, dataset[i]["answer"], dataset[i]["row"]) for a in group]
              for i, group in zip(mine, answers)}
    if world > 1 and torch.distributed.is_initialized():
        parts = [None] * world
        torch.distributed.all_gather_object(parts, scores)
        scores = {i: s for part in parts for i, s in part.items()}
    order = sorted(scores)
    counts = difficulty_counts([scores[i] for i in order])
    keep = [order[i] for i in counts["keep"]]
    log(f"difficulty filter: kept {len(keep)} of {len(order)} prompts ({counts['all right']} all right, "
        f"{counts['all wrong']} all wrong in {data_args.filter_samples} samples by '{data_args.filter_reward}')")
    if not keep:
        side = "never" if counts["all wrong"] == len(order) else "always" if counts["all right"] == len(order) \
            else "always or never"
        raise MiniQwenError(f"difficulty filter: no prompt kept: the starting model {side} answers them right by "
                            f"'{data_args.filter_reward}' in {data_args.filter_samples} samples, so every group "
                            f"would score alike and GRPO would learn nothing. Use prompts nearer its level, more "
                            f"--filter_samples, a reward with partial credit (--filter_reward format), or "
                            f"--difficulty_filter false.")
    dataset = dataset.select(keep)
    if training_args.process_index == 0:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"rows": list(dataset["row"]), "of": len(order), **{k: counts[k] for k in
                                     ("all right", "all wrong")}}, ensure_ascii=False, indent=1))
    return dataset


def check_enough_prompts(prompts: int, training_args) -> None:
    """TRL draws whole groups: a generation batch takes batch x processes x steps_per_generation / num_generations
    distinct prompts and drops a smaller remainder, so with fewer prompts than that the run would train 0 steps."""
    per_batch = training_args.generation_batch_size // training_args.num_generations
    if prompts < per_batch:
        a = training_args
        raise MiniQwenError(f"only {prompts} prompt(s) to train on, fewer than the {per_batch} distinct prompts one "
                            f"generation batch draws (--per_device_train_batch_size {a.per_device_train_batch_size} x "
                            f"{a.world_size} process(es) x {a.steps_per_generation} steps per generation / "
                            f"--num_generations {a.num_generations}): add prompts (or keep more with the difficulty "
                            f"filter), or lower --per_device_train_batch_size.")


def main(argv=None):
    data_args, model_args, lora_args, training_args = parse_args(tuple(ARGUMENTS.values()), argv)
    rewards = check_args(data_args, model_args, training_args)
    set_seed(training_args.seed)
    check_launch(training_args)
    options = data_options(data_args)
    files = find_stage_files(STAGE.name, data_args.data_dir, data_args.data_glob, options)  # checked once
    peft_config = lora_setup(lora_args, model_args.model_name_or_path, training_args.learning_rate)  # None: no LoRA
    tokenizer = load_stage_tokenizer(model_args, model_args.model_name_or_path)
    check_start(model_args.model_name_or_path, tokenizer,
                data_args.max_prompt_length + training_args.max_completion_length)
    dataset, _ = build_dataset(files, tokenizer, data_args.max_prompt_length, data_args.on_bad_rows,
                               source=data_args.data_dir, max_prompts=data_args.max_prompts, options=options)
    run_config = record_run(STAGE.name, (data_args, model_args, lora_args, training_args), files, training_args)

    model = load_model(model_args.model_name_or_path, model_args, training_args,
                       quantization_config(lora_args, training_args.bf16), frozen=lora_args.use_peft)
    print(describe(model))
    if data_args.difficulty_filter:
        dataset = difficulty_filter(dataset, model, tokenizer, data_args, training_args)
    check_enough_prompts(len(dataset), training_args)
    if peft_config is not None:
        with_base_path(model, model_args.model_name_or_path)  # adapter_config.json records where the base is
        # TRL scores the KL reference with the adapter disabled: the starting model itself, no second copy.
        print(f"reference: {model_args.model_name_or_path} itself, with the LoRA adapter disabled")
    else:
        # TRL loads a frozen copy from the model's own path (config._name_or_path: the checkpoint folder).
        print(f"reference: a frozen copy of {model_args.model_name_or_path}")

    # TRL counts prompt + answer tokens into num_input_tokens_seen itself (the tokens/s figure reads it); Trainer's
    # own count looks for input_ids, which GRPO batches do not have, and would warn at every step.
    training_args.include_num_input_tokens_seen = "no"
    trainer = with_long_run(GRPOTrainer, guard=STAGE.guard)(
        model=model,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[LossPlotCallback("GRPO", metrics=("reward", "kl"))],
        peft_config=peft_config,
    )
    if peft_config is not None:
        print(describe_adapter(keep_adapters_fp32(trainer), lora_args, training_args.learning_rate))
    trainer.optimizer_cls_and_kwargs = kahan_adamw(model_args, training_args)  # None: Trainer's AdamW
    trainer.callback_handler.callbacks.insert(0, ThroughputCallback(model.config))
    resume = resume_checkpoint(training_args)
    track_run(trainer, run_config, resume)  # --report_to: one tracker run per output_dir, continued on resume
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the reward / KL history, for utils/plot_losses.py and the eval report
    tokenizer.save_pretrained(training_args.output_dir)
    rewards_seen = [e["reward"] for e in trainer.state.log_history if isinstance(e.get("reward"), (int, float))
                    and math.isfinite(e["reward"])]
    if rewards_seen and trainer.is_world_process_zero():
        kl = last_metric(trainer.state, "kl")
        losses = first_and_last_loss(trainer.state)
        print(f"GRPO done: mean reward {rewards_seen[0]:.3f} -> {rewards_seen[-1]:.3f}"
              + (f", KL {kl:.4f}" if kl is not None else "")
              + (f", loss {losses[1]:.4f}" if losses else "") + f"; model saved to {training_args.output_dir}")
    return trainer


if __name__ == "__main__":
    run_main(main)
