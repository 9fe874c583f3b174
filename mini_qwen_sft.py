"""Supervised fine-tuning (SFT): the PT model learns to answer in the Qwen chat format.

Run as:
    python mini_qwen_sft.py                                  # one GPU (or CPU), data in data/sft/{7M,Gen}
    accelerate launch --config_file accelerate_config.yaml mini_qwen_sft.py
    nohup accelerate launch --config_file accelerate_config.yaml mini_qwen_sft.py > logs/output_sft.log 2>&1 &
    python demo/demo_sft.py                                  # on mini_data/, from the demo PT model
    python mini_qwen_sft.py --use_peft true                  # a LoRA adapter instead of every weight
    python demo/demo_sft.py --config demo/sft_lora.yaml      # the LoRA demo (CPU, about a minute)

Loss is on every assistant answer of each conversation, plus the `<|im_end|>` that closes it
(`--first_turn_only` trains only the first exchange, as the original project did). Over-long
conversations lose their oldest turns and the head of the question before any answer token.
Batches: whole conversations packed into rows of max_length (one shape for every step; see --packing).
"""

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from transformers import Trainer, set_seed
from trl import SFTConfig, SFTTrainer

from mini_qwen.callbacks import LossPlotCallback, ThroughputCallback
from mini_qwen.checkpoint import resume_checkpoint
from mini_qwen.cli import parse_args
from mini_qwen.data.checks import find_stage_files
from mini_qwen.data.common import ON_BAD_ROWS, data_options
from mini_qwen.data.files import DEFAULT_GLOB
from mini_qwen.data.packing import PackedRowsCollator, pack_conversations
from mini_qwen.data.prepare import CacheArguments, prepare_only, prepared_first
from mini_qwen.data.sft import build_dataset, data_cache
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.launch import check_launch
from mini_qwen.long_run import LongRunArguments, with_long_run
from mini_qwen.lora import (
    SFT_LEARNING_RATE,
    LoraArguments,
    describe_adapter,
    keep_adapters_fp32,
    lora_setup,
    quantization_config,
    with_base_path,
)
from mini_qwen.memory import ChunkedCausalLMLoss, hidden_states_only_kwargs
from mini_qwen.model import ModelArguments, describe, load_model, load_stage_tokenizer
from mini_qwen.run_config import record_run
from mini_qwen.speed import kahan_adamw
from mini_qwen.tracking import track_run
from mini_qwen.trainlog import first_and_last_loss


@dataclass
class SFTDataArguments(CacheArguments):
    data_dir: str = field(default="data/sft", metadata={"help": "Folder of Infinity-Instruct parquet files; 7M "
                                                              "and Gen sub-folders are mixed."})
    data_glob: str = field(default=DEFAULT_GLOB, metadata={
        "help": "Which files under data_dir to use (default: every file of a format mini_qwen reads: parquet, "
                "jsonl/json, csv/tsv, txt, their .gz/.zst, a datasets save_to_disk folder)."})
    messages_column: str | None = field(default=None, metadata={
        "help": "Column holding each conversation's turns, {from, value} or {role, content} (default: "
                "conversations, else messages)."})
    first_turn_only: bool = field(default=False, metadata={"help": "Train only the first user/assistant exchange "
                                                                 "(the original project's behaviour)."})
    on_bad_rows: str = field(default="skip", metadata={"help": "skip (and count) or error on bad conversations.",
                                                       "choices": list(ON_BAD_ROWS)})
    fused_lm_head: bool | None = field(default=None, metadata={
        "help": "TRL's chunked LM head (saves the memory of the full logits; also logs entropy / token accuracy). "
                "Default: on with a GPU, off on CPU, where it is about 2x slower than a plain lm_head + "
                "cross-entropy on the answer positions."})


@dataclass
class SFTModelArguments(ModelArguments):
    model_name_or_path: str | None = field(default="results/pt", metadata={"help": "The PT model to fine-tune."})


@dataclass
class MiniSFTConfig(LongRunArguments, SFTConfig):
    # The original run's values (6 x H800, ZeRO-2, ~9M conversations, 3 epochs, ~43 h).
    output_dir: str = field(default="results/sft", metadata={"help": "Checkpoints, final model, loss plot."})
    learning_rate: float = field(default=1e-5, metadata={
        "help": f"Peak learning rate (the original run's 1e-5). With --use_peft true and this flag not given: "
                f"{SFT_LEARNING_RATE:g}, LoRA's own default (see mini_qwen/lora.py)."})
    lora_learning_rate: ClassVar[float] = SFT_LEARNING_RATE  # --learning_rate's default under --use_peft true
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = field(default=0.1, metadata={"help": "A float below 1 is a fraction of all steps."})
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 12
    gradient_accumulation_steps: int = 16
    max_length: int | None = field(default=1024, metadata={"help": "Longest conversation in tokens."})
    save_strategy: str = "epoch"  # ~14 h an epoch in the original run: --save_every_minutes 60 saves between
    save_total_limit: int = 3
    logging_steps: float = 20
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    packing: bool = field(default=True, metadata={
        "help": "Pack whole conversations best-fit into rows of max_length tokens (position ids restart at each "
                "one; attention never crosses them): every batch is [batch, max_length], one fixed shape, nearly "
                "no pad, the same layout as PT's blocks. A row holds ~1.8 real Infinity-Instruct conversations "
                "at 1024 tokens, so a step sees more of them than with --packing false (the original padded "
                "batches). Same per-token loss as padded batches (tests/test_sft.py)."})
    packing_strategy: str = field(default="bfd", metadata={
        "help": "bfd only: best-fit decreasing, never splitting a conversation.", "choices": ["bfd"]})
    padding_free: bool = field(default=False, metadata={
        "help": "Flatten each batch into one row (TRL's padding-free collator), with position ids restarting at "
                "every conversation. Made for flash-attention's variable-length kernel: under SDPA the mask of "
                "one flattened row costs (batch x length)^2 attention. With --packing true it flattens the packed "
                "rows; with --packing false it replaces padding (--pad_to_multiple_of N: fewer distinct shapes)."})


class AnswerLossSFTTrainer(SFTTrainer):
    """SFTTrainer with a plain lm_head + cross-entropy on the trained (answer) positions only.

    Same loss as the model's own, but the prompt positions never reach the 152K-vocabulary
    output layer (20-50% of SFT tokens); used instead of TRL's fused, chunked LM head where that
    is slower (CPU).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Trainer.compute_loss reads this attribute (transformers 5.24; tests/test_architecture.py checks it).
        self.compute_loss_func = ChunkedCausalLMLoss(self.model, recompute=False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, "use_cache": False, **hidden_states_only_kwargs(inputs["labels"].device)}
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


# The flags by role, in the order main parses them (the planner and tests read this, as TRL scripts' make_parser).
ARGUMENTS = {"data": SFTDataArguments, "model": SFTModelArguments, "lora": LoraArguments, "training": MiniSFTConfig}


def main(argv=None):
    data_args, model_args, lora_args, training_args = parse_args(tuple(ARGUMENTS.values()), argv)
    if not training_args.max_length:
        raise MiniQwenError("--max_length must be set (the original run used 1024).")
    set_seed(training_args.seed)
    check_launch(training_args)
    # Found and checked once (unreadable, no `conversations`, wrong type), before the model is loaded.
    files = find_stage_files("sft", data_args.data_dir, data_args.data_glob, data_options(data_args))
    peft_config = lora_setup(lora_args, model_args.model_name_or_path, training_args.learning_rate)  # None: no LoRA
    tokenizer = load_stage_tokenizer(model_args, model_args.model_name_or_path)
    cache = data_cache(files, tokenizer, data_args.cache_dir, training_args.max_length, data_args.first_turn_only,
                       data_options(data_args))
    if data_args.prepare_only:  # utils/prepare_data.py: the tokenized rows, then exit before any model is loaded
        return prepare_only(cache, training_args.dataset_num_proc, data_args.prepare_shard, data_args.on_bad_rows)
    run_config = record_run("sft", (data_args, model_args, lora_args, training_args), files, training_args)

    model = load_model(model_args.model_name_or_path, model_args, training_args,
                       quantization_config(lora_args, training_args.bf16), frozen=lora_args.use_peft)
    print(describe(model))
    if peft_config is not None:
        with_base_path(model, model_args.model_name_or_path)  # adapter_config.json records where the base is

    max_length = training_args.max_length
    with prepared_first(training_args, cache, "tokenizing conversations", training_args.dataset_num_proc):
        dataset, _ = build_dataset(files, tokenizer, max_length, data_args.first_turn_only,
                                   data_args.on_bad_rows, training_args.dataset_num_proc, source=data_args.data_dir,
                                   cache_dir=data_args.cache_dir, options=data_options(data_args))
        if training_args.packing:  # shuffled first, so a row's conversations come from anywhere in the mix
            seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
            conversations = dataset.num_rows
            dataset = pack_conversations(dataset.shuffle(seed=seed), max_length)
            print(f"packing: {conversations} conversations -> {dataset.num_rows} rows of {max_length} tokens "
                  f"({conversations / dataset.num_rows:.2f} a row)")

    # The dataset is already tokenized, masked and cut to max_length by us; TRL only pads and batches.
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    training_args.max_length = None  # already enforced above; TRL refuses padding_free with a max_length set
    training_args.include_num_input_tokens_seen = "non_padding"  # real tokens for the tokens/s figure
    collator = None
    if training_args.packing and not training_args.padding_free:
        collator = PackedRowsCollator(tokenizer.pad_token_id, max_length)
        training_args.packing = False  # already packed; TRL would otherwise insist on its padding-free collator
    fused = data_args.fused_lm_head if data_args.fused_lm_head is not None else torch.cuda.is_available()
    trainer = with_long_run(SFTTrainer if fused else AnswerLossSFTTrainer)(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,  # None: TRL's (padded, or flattened with --padding_free)
        processing_class=tokenizer,
        callbacks=[LossPlotCallback("SFT loss")],
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
    trainer.save_state()  # trainer_state.json: the loss history, for utils/plot_losses.py and the eval report
    tokenizer.save_pretrained(training_args.output_dir)
    losses = first_and_last_loss(trainer.state)
    if losses and trainer.is_world_process_zero():
        print(f"SFT done: loss {losses[0]:.3f} -> {losses[1]:.3f}; model saved to {training_args.output_dir}")


if __name__ == "__main__":
    run_main(main)
