"""Pretraining (PT): a randomly initialised Qwen2.5-architecture model on IndustryCorpus2 text.

Run as:
    python mini_qwen_pt.py                                   # one GPU (or CPU), full data in data/pt
    accelerate launch --config_file accelerate_config.yaml mini_qwen_pt.py        # several GPUs, DeepSpeed ZeRO-2
    nohup accelerate launch --config_file accelerate_config.yaml mini_qwen_pt.py > logs/output_pt.log 2>&1 &
    python demo/demo_pt.py                                   # the same stage on mini_data/ (tiny model on CPU)
    python utils/prepare_data.py pt --data_dir data/pt --num_proc 16    # tokenize first (the full corpus: hours)
    bash run.sh pt nodes                                     # several machines (README: "Several nodes")
Any flag overrides the defaults (the original run's values) and a `--config recipe.yaml`:
    python mini_qwen_pt.py --model_preset tiny --block_size 128 --data_dir mini_data/pt --max_steps 20

Batch arithmetic: tokens per optimizer step = per_device_train_batch_size x block_size x
gradient_accumulation_steps x processes = 12 x 1024 x 16 x 6 = 1.18M in the original run
(16B tokens -> ~13.5K steps).
"""

from dataclasses import dataclass, field

from transformers import Trainer, TrainingArguments, set_seed

from mini_qwen.callbacks import LossPlotCallback, ThroughputCallback
from mini_qwen.checkpoint import resume_checkpoint
from mini_qwen.cli import parse_args
from mini_qwen.data.checks import find_stage_files
from mini_qwen.data.common import ON_BAD_ROWS, data_options
from mini_qwen.data.files import DEFAULT_GLOB, TXT_SPLITS
from mini_qwen.data.packing import PACKING, collate_blocks
from mini_qwen.data.prepare import CacheArguments, prepare_only, prepared_first
from mini_qwen.data.pt import build_dataset, data_cache
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.launch import check_launch
from mini_qwen.long_run import LongRunArguments, with_long_run
from mini_qwen.memory import ChunkedLossTrainer
from mini_qwen.model import ModelArguments, PresetArguments, describe, load_model, load_stage_tokenizer, new_model
from mini_qwen.run_config import record_run
from mini_qwen.speed import kahan_adamw
from mini_qwen.tracking import track_run
from mini_qwen.trainlog import first_and_last_loss


@dataclass
class PTDataArguments(CacheArguments):
    data_dir: str = field(default="data/pt", metadata={"help": "Folder of IndustryCorpus2 parquet files "
                                                             "(<industry>/<language>/high/*.parquet)."})
    data_glob: str = field(default=DEFAULT_GLOB, metadata={
        "help": "Which files under data_dir to use (default: every file of a format mini_qwen reads: parquet, "
                "jsonl/json, csv/tsv, txt, their .gz/.zst, a datasets save_to_disk folder)."})
    text_column: str | None = field(default=None, metadata={
        "help": "Column holding the document text (default: the one of text / content / raw_content a file has)."})
    txt_split: str = field(default="file", metadata={
        "help": "A .txt file is one document (file) or one per blank-line-separated block (blank_lines).",
        "choices": list(TXT_SPLITS)})
    block_size: int = field(default=1024, metadata={"help": "Tokens per training block."})
    packing: str = field(default="documents", metadata={
        "help": "documents: attention never crosses documents (position ids restart at each one); "
                "concat: the original project's plain concatenation.", "choices": list(PACKING)})
    on_bad_rows: str = field(default="skip", metadata={"help": "skip (and count) or error on empty/null texts.",
                                                       "choices": list(ON_BAD_ROWS)})
    dataset_num_proc: int | None = field(default=None, metadata={
        "help": "Processes that tokenize the corpus, one file each at a time (default: one process, whose "
                "tokenizer uses every core)."})


@dataclass
class PTTrainingArguments(LongRunArguments, TrainingArguments):
    # The original run's values (6 x H800, ZeRO-2, 16B tokens, 1 epoch, ~25 h).
    output_dir: str = field(default="results/pt", metadata={"help": "Checkpoints, final model, loss plot."})
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = field(default=0.1, metadata={"help": "A float below 1 is a fraction of all steps."})
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 12
    gradient_accumulation_steps: int = 16
    save_steps: float = 100_000  # more than the whole run: the clock (--save_every_minutes 60) saves instead
    save_total_limit: int = 3
    logging_steps: float = 20
    dataloader_num_workers: int = 0
    chunked_loss: bool = field(default=False, metadata={
        "help": "Score the 152K-vocabulary output layer a chunk of tokens at a time, recomputed in backward, "
                "so the full logits are never held (mini_qwen/memory.py); same loss, less memory."})


# The flags by role, in the order main parses them (the planner and tests read this, as TRL scripts' make_parser).
ARGUMENTS = {"data": PTDataArguments, "preset": PresetArguments, "model": ModelArguments,
             "training": PTTrainingArguments}


def main(argv=None):
    data_args, preset_args, model_args, training_args = parse_args(tuple(ARGUMENTS.values()), argv)
    set_seed(training_args.seed)
    check_launch(training_args)
    # Found and checked once, before the model is built; the builder below trusts this list.
    files = find_stage_files("pt", data_args.data_dir, data_args.data_glob, data_options(data_args))
    checkpoint = model_args.model_name_or_path  # set: continue pretraining an existing model
    tokenizer = load_stage_tokenizer(model_args, checkpoint)
    cache = data_cache(files, tokenizer, data_args.cache_dir, data_options(data_args))
    if data_args.prepare_only:  # utils/prepare_data.py: the token cache, then exit before any model is built
        return prepare_only(cache, data_args.dataset_num_proc, data_args.prepare_shard, data_args.on_bad_rows)
    run_config = record_run("pt", (data_args, preset_args, model_args, training_args), files, training_args)

    if checkpoint:
        model = load_model(checkpoint, model_args, training_args)
    else:
        model = new_model(preset_args, model_args, training_args)
    if data_args.block_size > model.config.max_position_embeddings:
        raise MiniQwenError(f"--block_size {data_args.block_size} exceeds the model's max_position_embeddings "
                            f"{model.config.max_position_embeddings}: lower it or pick another preset.")
    print(describe(model))

    # Rank 0 tokenizes into the shared cache first (or, at full scale, utils/prepare_data.py did before the
    # launch); the other ranks then just read it.
    with prepared_first(training_args, cache, "tokenizing the corpus", data_args.dataset_num_proc):
        dataset, _ = build_dataset(files, tokenizer, data_args.block_size, data_args.packing, data_args.cache_dir,
                                   data_options(data_args), data_args.on_bad_rows, source=data_args.data_dir,
                                   num_proc=data_args.dataset_num_proc)
    tokens_per_step = (training_args.per_device_train_batch_size * data_args.block_size
                       * training_args.gradient_accumulation_steps * training_args.world_size)
    print(f"data: {len(dataset):,} blocks of {data_args.block_size} tokens ({data_args.packing} packing); "
          f"{tokens_per_step:,} tokens per optimizer step")

    trainer = with_long_run(ChunkedLossTrainer if training_args.chunked_loss else Trainer)(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collate_blocks,
        processing_class=tokenizer,
        callbacks=[LossPlotCallback("pretraining loss")],
    )
    trainer.optimizer_cls_and_kwargs = kahan_adamw(model_args, training_args)  # None: Trainer's AdamW
    # First in the list so the progress printer already shows tokens/s.
    trainer.callback_handler.callbacks.insert(
        0, ThroughputCallback(model.config, tokens_per_step,
                              seq_len=data_args.block_size))
    resume = resume_checkpoint(training_args)
    track_run(trainer, run_config, resume)  # --report_to: one tracker run per output_dir, continued on resume
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the loss history, for utils/plot_losses.py and the eval report
    tokenizer.save_pretrained(training_args.output_dir)  # save_model alone does not (the original FAQ 9)
    losses = first_and_last_loss(trainer.state)
    if losses and trainer.is_world_process_zero():
        print(f"PT done: loss {losses[0]:.3f} -> {losses[1]:.3f}; model saved to {training_args.output_dir}")


if __name__ == "__main__":
    run_main(main)
