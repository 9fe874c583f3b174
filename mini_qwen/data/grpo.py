"""GRPO data, all in one place: prompts with reference answers (jsonl or parquet) -> the rows GRPOTrainer samples.

The same face as every stage's data module (see mini_qwen/data/pt.py): columns, check_schema, row_problems,
overlong_rows, build_dataset. Unlike the other stages there is no token cache: a prompt set is small (thousands of
rows, not millions) and the trainer generates the answers itself, so the rows are read whole.

Each row holds a `prompt` (the user's question, text) and an `answer` (the reference the rewards check, e.g. "42",
"3/4", "一千二百"; a number column works too). Every prompt is rendered once in the Qwen chat format of
mini_qwen/chat.py (`format_prompt`: the user turn and the assistant header), the format SFT trained, so TRL gets
plain text and never applies the tokenizer's own template (whose default system prompt SFT never saw). A `row`
column ("file:line") goes along so that a failing reward names the prompt it was scoring.

Bad rows (null / empty prompt, no reference answer, an answer with no number in it) are skipped and counted by
default; `on_bad_rows="error"` stops at the first with its file and row. A prompt longer than
`max_prompt_length` tokens is skipped and counted too (cutting a question would change its answer).
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mini_qwen.chat import format_prompt
from mini_qwen.data import common
from mini_qwen.data.common import check_string_column, read_schema, require_columns
from mini_qwen.errors import MiniQwenError
from mini_qwen.rewards.numbers import parse_number

NAME = "grpo"
FILES_MERGED = False  # read file by file
WHAT = "GRPO prompts"  # how messages name the data
COLUMNS = {"prompt": "the user's question as text", "answer": "the reference answer the rewards check"}
SUFFIXES = (".jsonl", ".parquet")


class BadPrompt(ValueError):
    """A row that cannot be trained on; the message says why."""


def columns(text_column: str = "text") -> list[str]:
    """The columns GRPO reads (`text_column` is PT's; every stage module takes it so checks.py can loop)."""
    return list(COLUMNS)


def check_schema(path: Path, schema: pa.Schema, text_column: str = "text") -> None:
    """prompt is text; answer is text or a number. Raises MiniQwenError naming the file."""
    require_columns(path, schema, COLUMNS)
    check_string_column(path, schema, "prompt")
    kind = schema.field("answer").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_floating(kind)):
        raise MiniQwenError(f"{path}: column 'answer' must hold text or numbers but has type {kind}.")


def parse_prompt(prompt, answer) -> tuple[str, str]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadPrompt("empty prompt")
    if answer is None or not str(answer).strip():
        raise BadPrompt("no reference answer")
    if parse_number(str(answer)) is None:
        raise BadPrompt("reference answer holds no number")
    return prompt, str(answer)


def row_problems(values: dict[str, list]) -> list[str | None]:
    """Why each row of a batch cannot be trained on, or None for a good one."""
    return common.row_problems({name: values[name] for name in COLUMNS}, parse_prompt, BadPrompt)


def overlong_rows(values: dict[str, list], tokenizer, max_length: int,
                  max_prompt_length: int | None = None) -> list[str | None]:
    """For good rows: a prompt (chat headers included) longer than the prompt budget is skipped."""
    budget = max_prompt_length or max(max_length // 2, 1)
    return [f"prompt longer than {budget} tokens (skipped)" if n > budget else None
            for n in prompt_lengths(tokenizer, values["prompt"])]


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    texts = [format_prompt(p) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


# ------------------------------------------------------------------------------------------------ reading

def find_files(data_dir: str, data_glob: str = "**/*") -> list[Path]:
    """The prompt files (.jsonl, .parquet) under `data_dir`, each parquet schema checked once."""
    root = Path(data_dir)
    if not root.exists():
        raise MiniQwenError(f"{WHAT} folder '{data_dir}' does not exist: point --data_dir at a folder of .jsonl / "
                            f".parquet files with prompt + answer (the demo's: mini_data/grpo).")
    files = [root] if root.is_file() else sorted(p for p in root.glob(data_glob) if p.is_file())
    files = [p for p in files if p.suffix in SUFFIXES]
    if not files:
        raise MiniQwenError(f"no .jsonl or .parquet files matching '{data_glob}' under {WHAT} folder '{data_dir}': "
                            f"check --data_dir / --data_glob.")
    for path in files:
        if path.suffix == ".parquet":
            check_schema(path, read_schema(path))
    return files


# TODO(reader layer): move into mini_qwen/data/files.py (jsonl/csv/txt/parquet readers) when it lands.
def read_jsonl(path: Path, names: list[str]) -> dict[str, list]:
    """`names` of every row of a jsonl file ({column: values}); a line that is not a JSON object stops with
    its file and line; a missing key reads as None (a bad row, counted like a null)."""
    out = {name: [] for name in names}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MiniQwenError(f"{path}:{line_no}: not a JSON line ({err.msg}).") from None
            if not isinstance(row, dict):
                raise MiniQwenError(f"{path}:{line_no}: a JSON object with prompt and answer is expected.")
            for name in names:
                out[name].append(row.get(name))
    if not any(v is not None for v in out["answer"]) and out["answer"]:
        raise MiniQwenError(f"{path}: no row has an 'answer' ({COLUMNS['answer']}); GRPO scores answers against "
                            f"it. Add it to every row.")
    return out


def read_rows(path: Path) -> dict[str, list]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, list(COLUMNS))
    return pq.read_table(path, columns=list(COLUMNS)).to_pydict()


def row_name(path: Path, index: int) -> str:
    """How messages name a row: file:line for jsonl (1-based, as editors count), file:row for parquet (0-based)."""
    return f"{path}:{index + 1}" if path.suffix == ".jsonl" else f"{path}:row {index}"


def build_dataset(files: list[Path], tokenizer, max_prompt_length: int, on_bad_rows: str = "skip",
                  source: str = "", log=print, max_prompts: int | None = None):
    """The training rows (prompt: chat-format text, answer, row) and {reason: count} of the skipped ones."""
    import datasets

    rows = {"prompt": [], "answer": [], "row": []}
    skipped: dict[str, int] = {}
    for path in files:
        values = read_rows(path)
        problems = row_problems(values)
        lengths = prompt_lengths(tokenizer, [p if isinstance(p, str) else "" for p in values["prompt"]])
        for i, (prompt, answer, problem) in enumerate(zip(values["prompt"], values["answer"], problems)):
            if problem is None and lengths[i] > max_prompt_length:
                problem = f"prompt longer than --max_prompt_length {max_prompt_length} tokens"
            if problem:
                if on_bad_rows == "error":
                    raise MiniQwenError(f"{row_name(path, i)}: {problem}. Fix or remove the row, or rerun with "
                                        f"--on_bad_rows skip to skip and count such rows.")
                reason = common.fold_digits(problem)
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            rows["prompt"].append(format_prompt(prompt))
            rows["answer"].append(str(answer))
            rows["row"].append(row_name(path, i))
    dataset = datasets.Dataset.from_dict(rows)
    log(f"data: {len(dataset)} prompts from {len(files)} file(s) under {source or files[0].parent}")
    common.log_skipped_or_stop(dataset, skipped, log, f"no usable prompt in {source or files[0].parent}: every row "
                                                      f"was skipped (see the counts above).")
    if max_prompts is not None and max_prompts < len(dataset):
        dataset = dataset.select(range(max_prompts))
        log(f"data: training on the first {len(dataset)} prompts (--max_prompts)")
    return dataset, skipped
