"""Tokenize a stage's data into the cache the stage reads, before (and apart from) the training launch.

Run as:
    python utils/prepare_data.py pt --data_dir data/pt --num_proc 16
    python utils/prepare_data.py sft --data_dir data/sft --model_name_or_path results/pt --num_proc 16
    python utils/prepare_data.py dpo --data_dir data/dpo --model_name_or_path results/sft --num_proc 16
    # K machines sharing the cache folder (e.g. NFS), each with its own I; then once more without --shard:
    python utils/prepare_data.py pt --data_dir /shared/data/pt --cache_dir /shared/cache --shard 0/4

Every flag after the stage is the stage's own (data_dir, data_glob, cache_dir, text_column, max_length,
max_prompt_length, first_turn_only, model_name_or_path / tokenizer_path: whatever changes the tokens), so
give it the flags you will train with, `--config recipe.yaml` included: the stage then finds the cache and
starts at once. This runs the stage with `--prepare_only true` (mini_qwen/data/prepare.py): one part per
input file, written under a temporary name and renamed, so a killed run, rerun, redoes only the files
that were not finished; a progress bar with an ETA; then the cache folder appears in one rename.

    --num_proc N    processes on this machine, one file each at a time (the stage's --dataset_num_proc)
    --shard I/K     this machine's share: the files i with i % K == I (the stage's --prepare_shard)
"""

import sys

from mini_qwen import stages
from mini_qwen.errors import MiniQwenError, run_main

OWN_FLAGS = {"--num_proc": "--dataset_num_proc", "--shard": "--prepare_shard"}


def stage_argv(argv: list[str]) -> tuple[str, list[str]]:
    """(stage, the stage's own command line with --prepare_only true), from this tool's command line."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    stage, rest = argv[0], []
    prepared = [s.name for s in stages.STAGES if s.prepare_bytes_per_second is not None]
    if stage not in prepared:
        what = "has no token cache to prepare" if stage in stages.BY_NAME else "is an unknown stage"
        raise MiniQwenError(f"'{stage}' {what}: use one of {', '.join(prepared)} "
                            f"(python utils/prepare_data.py {prepared[0]} --data_dir data/{prepared[0]}).")
    for arg in argv[1:]:
        flag, equals, value = arg.partition("=")
        rest.append(OWN_FLAGS.get(flag, flag) + equals + value)
    if "--prepare_only" in rest:
        raise MiniQwenError("--prepare_only is what this tool adds; leave it out.")
    return stage, [*rest, "--prepare_only", "true"]


def main(argv=None):
    stage, args = stage_argv(list(sys.argv[1:] if argv is None else argv))
    return stages.stage(stage).main()(args)


if __name__ == "__main__":
    run_main(main)
