"""Check a stage's data files before training: one line per file (with the schema detected), then a verdict.

Run as:
    python utils/check_data.py pt data/pt
    python utils/check_data.py sft data/sft --max_length 1024          # also count over-long conversations
    python utils/check_data.py dpo data/dpo --on_bad_rows error        # any bad row fails the check
    python utils/check_data.py pt data/pt --glob "news_media/**/*.parquet"
    python utils/check_data.py sft mydata/ --messages_column dialog                # any format data/files.py reads

For every selected file: rows; columns the stage never reads (extra) and those it needs but
the file lacks (pt needs `text`, sft `conversations`, dpo `prompt` / `chosen` / `rejected`);
null, empty or whitespace-only texts; conversations with an unknown role, no final assistant
answer or turns out of order; DPO pairs whose chosen equals rejected. Across files: columns
whose type differs (7M's int64 `id` vs Gen's string one is reported as info, since no stage
reads `id`; a clash in a column the stage reads is an error). With `--max_length`, rows
longer than that many tokens are counted with what the stage will do to them (this loads the
tokenizer and tokenizes every row, so it is the slow part; leave it out for a quick check).

The checks are the stages' own (mini_qwen/data/checks.py and each stage's data module), so a row
reported here is a row the stage skips (default) or stops on (`--on_bad_rows error`), and the
verdict is the stage's: exit 0 when the stage with the same `--on_bad_rows` would train on the
data, 2 with one `error:` line otherwise. With the stages' default, skip, bad rows among good
ones are reported as counts and the check passes; with `--on_bad_rows error` any bad row fails
it. Missing columns, unreadable files and type clashes in a column the stage reads always fail,
since no stage can get past them.
"""

from __future__ import annotations

import argparse
import time

from mini_qwen.data.checks import STAGES, check_data, stage_data, verdict
from mini_qwen.data.common import ON_BAD_ROWS, data_options, find_data_files
from mini_qwen.data.files import DEFAULT_GLOB, TXT_SPLITS
from mini_qwen.errors import MiniQwenError, run_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python utils/check_data.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=list(STAGES), help="which stage's schema the files must follow")
    parser.add_argument("data_dir", help="a folder of data files (or one file): parquet, jsonl/json, csv/tsv, txt, "
                                         "their .gz/.zst, a datasets save_to_disk folder")
    parser.add_argument("--glob", "--data_glob", dest="glob", default=DEFAULT_GLOB,
                        help=f"which files under data_dir (default: {DEFAULT_GLOB}: every readable file, as the "
                             f"stages)")
    parser.add_argument("--max_length", type=int, default=None,
                        help="also count rows longer than this many tokens (loads the tokenizer; slower)")
    parser.add_argument("--max_prompt_length", type=int, default=None,
                        help="dpo with --max_length: the prompt budget (default: half of --max_length)")
    parser.add_argument("--tokenizer_path", default=None,
                        help="tokenizer folder for --max_length (default: the project's, see mini_qwen/tokenizer.py)")
    parser.add_argument("--text_column", default=None,
                        help="pt: the column holding the text (default: the one of text / content / raw_content)")
    parser.add_argument("--messages_column", default=None,
                        help="sft: the column holding the turns (default: conversations, else messages)")
    parser.add_argument("--columns", default=None, help="NAME=COLUMN,...: map your columns onto the stage's schema")
    parser.add_argument("--txt_split", choices=TXT_SPLITS, default="file",
                        help="pt: a .txt file is one document (file) or one per blank-line block (blank_lines)")
    parser.add_argument("--on_bad_rows", choices=ON_BAD_ROWS, default="skip",
                        help="skip (default, as the stages): report bad rows as counts and pass when good rows "
                             "remain; error: any bad row fails the check")
    parser.add_argument("--batch_rows", type=int, default=2048, help="rows read at a time (memory bound)")
    args = parser.parse_args(argv)
    if args.max_length is not None and args.max_length < 1:
        raise MiniQwenError(f"--max_length must be at least 1 (got {args.max_length}).")

    start = time.perf_counter()
    files = find_data_files(args.data_dir, args.glob, what=stage_data(args.stage).WHAT)
    tokenizer = None
    if args.max_length:
        from mini_qwen.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer_path)
    print(f"checking {len(files)} {args.stage} files under {args.data_dir}"
          + (f" (max_length {args.max_length})" if args.max_length else ""), flush=True)
    report = check_data(args.stage, files, data_options(args), tokenizer, args.max_length, args.max_prompt_length,
                        args.batch_rows, log=lambda line: print(line, flush=True), on_bad_rows=args.on_bad_rows)
    for line in report.lines()[len(report.files):]:
        print(line)
    problem = verdict(report, args.on_bad_rows)
    if problem:
        raise MiniQwenError(problem)
    bad = sum(report.bad.values())
    note = f" ({bad} bad rows will be skipped)" if bad else ""
    print(f"ok: {report.rows - bad} usable rows{note}; checked in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    run_main(main)
