"""Direct preference optimisation (DPO): the SFT model learns to prefer the chosen answer of each pair.

Run as:
    python mini_qwen_dpo.py                                  # one GPU (or CPU), data in data/dpo (train + test mixed)
    accelerate launch --config_file accelerate_config.yaml mini_qwen_dpo.py
    nohup accelerate launch --config_file accelerate_config.yaml mini_qwen_dpo.py > logs/output_dpo.log 2>&1 &
    python demo/demo_dpo.py                                  # on mini_data/, from the demo SFT model
    python mini_qwen_dpo.py --use_peft true                  # a LoRA adapter; the reference is the base model

The reference model is a second, frozen copy of the starting checkpoint (`--model_name_or_path`,
results/sft by default). `--precompute_ref_log_probs true` instead scores every pair with the
starting model once before training and keeps no second model in memory. With `--use_peft true`
the reference is the same model with the adapter disabled (TRL's peft path): no second copy either.

Learning rate: the original project's final run used 5e-7 for 3 epochs from the 2-epoch SFT
checkpoint. Its earlier tries: 1e-6 overfitted (the loss fell in a staircase, a drop at each
new epoch, i.e. the model memorised pairs it had seen), 1e-7 barely moved the loss. With
`--use_peft true` and no `--learning_rate`, 5e-6 (LoRA's default; mini_qwen/lora.py says why).

Prompts are cut to `--max_prompt_length` tokens from the head of the question (the end of the
question and the assistant header stay), then each answer's tail so prompt + answer fits
`--max_length`; see mini_qwen/data/dpo.py.
"""

from dataclasses import dataclass, field
from typing import ClassVar

from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from mini_qwen.callbacks import LossPlotCallback, ThroughputCallback
from mini_qwen.checkpoint import resume_checkpoint
from mini_qwen.cli import parse_args
from mini_qwen.data.checks import find_stage_files
from mini_qwen.data.common import ON_BAD_ROWS, data_options
from mini_qwen.data.dpo import ID_COLUMNS, LENGTH_SAMPLERS, build_dataset, data_cache, with_lengths
from mini_qwen.data.files import DEFAULT_GLOB
from mini_qwen.data.prepare import CacheArguments, prepare_only, prepared_first
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.launch import check_launch
from mini_qwen.long_run import LongRunArguments, with_long_run
from mini_qwen.lora import (
    DPO_LEARNING_RATE,
    LoraArguments,
    describe_adapter,
    keep_adapters_fp32,
    lora_setup,
    quantization_config,
    with_base_path,
)
from mini_qwen.model import ModelArguments, describe, load_model, load_stage_tokenizer
from mini_qwen.run_config import record_run
from mini_qwen.speed import kahan_adamw
from mini_qwen.tracking import track_run
from mini_qwen.trainlog import first_and_last_loss, last_metric


@dataclass
class DPODataArguments(CacheArguments):
    data_dir: str = field(default="data/dpo", metadata={"help": "Folder of Infinity-Preference parquet files; "
                                                              "train and test files are mixed, as originally."})
    data_glob: str = field(default=DEFAULT_GLOB, metadata={
        "help": "Which files under data_dir to use (default: every file of a format mini_qwen reads: parquet, "
                "jsonl/json, csv/tsv, txt, their .gz/.zst, a datasets save_to_disk folder)."})
    max_prompt_length: int = field(default=512, metadata={"help": "Prompt budget in tokens (chat headers included): "
                                                                  "the head of longer questions is cut."})
    on_bad_rows: str = field(default="skip", metadata={"help": "skip (and count) or error on bad pairs.",
                                                       "choices": list(ON_BAD_ROWS)})
    max_pairs: int | None = field(default=None, metadata={"help": "Train on the first N usable pairs only "
                                                                  "(demos and smoke tests). Default: all."})


@dataclass
class DPOModelArguments(ModelArguments):
    model_name_or_path: str | None = field(default="results/sft", metadata={"help": "The SFT model to align; a "
                                                                             "frozen copy is the reference."})


@dataclass
class MiniDPOConfig(LongRunArguments, DPOConfig):
    # The original run's values (6 x H800, ZeRO-2, Infinity-Preference, 3 epochs from the SFT checkpoint).
    output_dir: str = field(default="results/dpo", metadata={"help": "Checkpoints, final model, loss plot."})
    learning_rate: float = field(default=5e-7, metadata={
        "help": f"The original final run's value; 1e-6 overfitted (staircase loss), 1e-7 barely moved the loss. With "
                f"--use_peft true and this flag not given: {DPO_LEARNING_RATE:g}, LoRA's own default (see "
                f"mini_qwen/lora.py)."})
    lora_learning_rate: ClassVar[float] = DPO_LEARNING_RATE  # --learning_rate's default under --use_peft true
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = field(default=0.1, metadata={"help": "A float below 1 is a fraction of all steps."})
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 12
    gradient_accumulation_steps: int = 16
    max_length: int | None = field(default=1024, metadata={"help": "Longest prompt + answer in tokens."})
    save_strategy: str = "epoch"  # --save_every_minutes 60 also saves within an epoch
    save_total_limit: int = 3
    logging_steps: float = 20
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    pad_to_multiple_of: int | str | None = field(default=64, metadata={
        "help": "Pad each batch's sequences to a multiple of this many tokens: at most max_length / 64 = 16 "
                "shapes at 1024, so after the first few no step meets a new sequence length (about 3 percent more "
                "computed tokens on real pairs). none: pad to the longest only (TRL's default on a GPU)."})


class TokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on rows we tokenized ourselves (prompt_ids / chosen_ids / rejected_ids).

    TRL 1.16 has no switch for an already tokenized preference dataset: `_prepare_dataset` always
    runs for text data, looks for a `prompt` column (else calls `extract_prompt`, which needs
    `chosen`/`rejected` texts and fails with KeyError on ids), appends the eos token to text
    answers and re-tokenizes prompt + answer. Our rows are already in the Qwen chat format, cut to
    `max_length` and closed with one `<|im_end|>`, so they go to TRL's collator unchanged (its own
    `max_length` cut is then a no-op).

    Written against TRL 1.16.0, where `_prepare_dataset(self, dataset, processing_class, args,
    dataset_name)` is private; tests/test_architecture.py fails loudly if that hook changes.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        columns = set(dataset.column_names or [])
        if set(ID_COLUMNS) <= columns and "prompt" not in columns:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        # Trainer drops the columns the collator does not read before it builds the sampler; a length-aware
        # sampler (--train_sampling_strategy group_by_length / batch_rebalance) needs the `length` column kept.
        super()._set_signature_columns_if_needed()
        if self.args.train_sampling_strategy in LENGTH_SAMPLERS and \
                self.args.length_column_name not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, self.args.length_column_name]


# The flags by role, in the order main parses them (the planner and tests read this, as TRL scripts' make_parser).
ARGUMENTS = {"data": DPODataArguments, "model": DPOModelArguments, "lora": LoraArguments, "training": MiniDPOConfig}


def main(argv=None):
    data_args, model_args, lora_args, training_args = parse_args(tuple(ARGUMENTS.values()), argv)
    if not training_args.max_length:
        raise MiniQwenError("--max_length must be set (the original run used 1024).")
    if training_args.sync_ref_model and training_args.precompute_ref_log_probs:
        raise MiniQwenError("--sync_ref_model and --precompute_ref_log_probs cannot be combined: precomputed "
                            "reference log-probs would go stale when the reference is updated. Drop one of them.")
    if lora_args.use_peft and training_args.sync_ref_model:
        raise MiniQwenError("--sync_ref_model cannot be combined with --use_peft: the LoRA reference is the base "
                            "model with the adapter disabled, which has no weights of its own to update. Drop one.")
    set_seed(training_args.seed)
    check_launch(training_args)
    # Found and checked once, before the models are loaded; the builder below trusts this list.
    files = find_stage_files("dpo", data_args.data_dir, data_args.data_glob, data_options(data_args))
    peft_config = lora_setup(lora_args, model_args.model_name_or_path, training_args.learning_rate)  # None: no LoRA
    tokenizer = load_stage_tokenizer(model_args, model_args.model_name_or_path)
    cache = data_cache(files, tokenizer, data_args.cache_dir, training_args.max_length, data_args.max_prompt_length,
                       data_options(data_args))
    if data_args.prepare_only:  # utils/prepare_data.py: the tokenized pairs, then exit before any model is loaded
        return prepare_only(cache, training_args.dataset_num_proc, data_args.prepare_shard, data_args.on_bad_rows)
    run_config = record_run("dpo", (data_args, model_args, lora_args, training_args), files, training_args)

    model = load_model(model_args.model_name_or_path, model_args, training_args,
                       quantization_config(lora_args, training_args.bf16), frozen=lora_args.use_peft)
    print(describe(model))
    if peft_config is not None:
        with_base_path(model, model_args.model_name_or_path)  # adapter_config.json records where the base is
        # ref_model=None with a peft model: TRL scores the reference with the adapter disabled (use_adapter(model,
        # None)), i.e. the starting model itself; nothing is reloaded and no copy is kept.
        ref_model = None
        print(f"reference: {model_args.model_name_or_path} itself, with the LoRA adapter disabled")
    elif training_args.precompute_ref_log_probs:
        # TRL scores every pair with `model` itself before the first step (no reload from a path), then keeps
        # only the numbers: no second model in memory.
        ref_model = None
        print(f"reference: log-probs of {model_args.model_name_or_path} precomputed before training")
    else:
        # Explicit, so TRL never reloads the reference from `config._name_or_path` itself. Loaded exactly as the
        # policy is (fp32 under bf16 autocast, bf16 with --pure_bf16, fp32 on CPU), so both compute the same
        # function and the log-ratio is 0 at step 0. A bf16 copy next to an fp32-master policy would round its
        # matmul weights as autocast does, but run its embeddings, norms and residual stream in bf16 where the
        # policy runs them in fp32: 0.01-0.04 nats per 250 tokens of spurious reward before the first update.
        # Cost: 4 bytes a parameter instead of 2 (the 1b preset: ~2 GB more); --precompute_ref_log_probs true
        # keeps no reference at all. Under DeepSpeed, TRL's prepare_deepspeed casts it to bf16 with the policy.
        ref_model = load_model(model_args.model_name_or_path, model_args, training_args)
        ref_model.requires_grad_(False)
        ref_model.eval()
        print(f"reference: a frozen copy of {model_args.model_name_or_path}")

    with prepared_first(training_args, cache, "tokenizing preference pairs", training_args.dataset_num_proc):
        dataset, _ = build_dataset(files, tokenizer, training_args.max_length, data_args.max_prompt_length,
                                   data_args.on_bad_rows, training_args.dataset_num_proc, source=data_args.data_dir,
                                   cache_dir=data_args.cache_dir, options=data_options(data_args))
        if data_args.max_pairs is not None and data_args.max_pairs < len(dataset):
            dataset = dataset.select(range(data_args.max_pairs))
            print(f"data: training on the first {len(dataset)} pairs (--max_pairs)")
        if training_args.train_sampling_strategy in LENGTH_SAMPLERS:  # batches of like lengths: less padding
            dataset = with_lengths(dataset, training_args.length_column_name)

    training_args.include_num_input_tokens_seen = "non_padding"  # real tokens (chosen + rejected) for tokens/s
    trainer = with_long_run(TokenizedDPOTrainer)(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[LossPlotCallback("DPO loss", metrics=("loss", "rewards/accuracies", "rewards/margins"))],
        peft_config=peft_config,  # TRL wraps the model in the adapter (peft) and trains only that
    )
    if peft_config is not None:  # fp32 adapters also where TRL cast them to bf16 (4-bit base)
        print(describe_adapter(keep_adapters_fp32(trainer), lora_args, training_args.learning_rate))
    trainer.optimizer_cls_and_kwargs = kahan_adamw(model_args, training_args)  # None: Trainer's AdamW
    trainer.callback_handler.callbacks.insert(0, ThroughputCallback(model.config))
    resume = resume_checkpoint(training_args)
    track_run(trainer, run_config, resume)  # --report_to: one tracker run per output_dir, continued on resume
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the loss / reward history, for utils/plot_losses.py and the eval report
    tokenizer.save_pretrained(training_args.output_dir)
    losses = first_and_last_loss(trainer.state)
    if losses and trainer.is_world_process_zero():
        accuracy = last_metric(trainer.state, "rewards/accuracies")
        margin = last_metric(trainer.state, "rewards/margins")
        rewards = (f"; last reward accuracy {accuracy:.2f}, margin {margin:.3f}"
                   if accuracy is not None and margin is not None else "")
        print(f"DPO done: loss {losses[0]:.3f} -> {losses[1]:.3f}{rewards}; model saved to {training_args.output_dir}")
    return trainer


if __name__ == "__main__":
    run_main(main)
