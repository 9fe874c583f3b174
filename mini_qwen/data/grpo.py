"""GRPO data, all in one place: prompts with reference answers (any format of data/files.py) -> the rows
GRPOTrainer samples.

The same face as every stage's data module (see mini_qwen/data/pt.py): SCHEMAS, columns, check_schema,
row_problems, overlong_rows, build_dataset. Unlike the other stages there is no token cache: a prompt set is small
(thousands of rows, not millions) and the trainer generates the answers itself, so the rows are read whole.

Each row holds a `prompt` (the user's question, text) and an `answer` (the reference the rewards check, e.g. "42",
"3/4", "一千二百"; a number column works too). Every prompt is rendered once in the Qwen chat format of
mini_qwen/chat.py (`format_prompt`: the user turn and the assistant header), the format SFT trained, so TRL gets
plain text and never applies the tokenizer's own template (whose default system prompt SFT never saw). A `row`
column ("file:line") goes along so that a failing reward names the prompt it was scoring.

Bad rows (null / empty prompt, no reference answer, an answer with no number in it) are skipped and counted by
default; `on_bad_rows="error"` stops at the first with its file and row. A prompt longer than
`max_prompt_length` tokens is skipped and counted too (cutting a question would change its answer).
"""

from pathlib import Path

import pyarrow as pa

from mini_qwen.chat import format_prompt
from mini_qwen.data import common
from mini_qwen.data.common import RowSchema, detect_layout, is_text, read_schema
from mini_qwen.errors import MiniQwenError
from mini_qwen.rewards.numbers import parse_number

NAME = "grpo"
FILES_MERGED = False  # read file by file
WHAT = "GRPO prompts"  # how messages name the data
COLUMNS = {"prompt": "the user's question as text", "answer": "the reference answer the rewards check"}


class BadPrompt(ValueError):
    """A row that cannot be trained on; the message says why."""


def _fits(types):
    if not is_text(types["prompt"]):
        return f"column 'prompt' must hold text but has type {types['prompt']}"
    kind = types["answer"]
    if not (is_text(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
        return f"column 'answer' must hold text or numbers but has type {kind}"
    return None


def _as_rows(values):
    return {"prompt": values["prompt"], "answer": values["answer"]}


# Other names the two columns go by in public math sets (GSM8K: question / answer; MATH: problem / solution is a
# worked solution, not a number, so it is not an alias: map it with --columns answer=... after extracting one).
SCHEMAS = (
    RowSchema("prompt + answer", dict(COLUMNS), fits=_fits, convert=_as_rows,
              aliases={"prompt": ("question", "problem", "query"), "answer": ("reference", "ground_truth")},
              example='{"prompt": "Tom has 3 apples and buys 4 more. How many apples does he have?", '
                      '"answer": "7"}'),
)


def columns(options: dict | None = None) -> list[str]:
    """GRPO's own columns (whatever the file calls them): prompt, answer."""
    return list(COLUMNS)


def check_schema(path: Path, schema: pa.Schema, options: dict | None = None):
    """The file's Layout; else MiniQwenError naming the file, its columns and the mapping flag."""
    return detect_layout(path, schema, options, SCHEMAS, WHAT)


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
    texts = [format_prompt(p if isinstance(p, str) else "") for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


# ------------------------------------------------------------------------------------------------ reading

def read_rows(path: Path, options: dict | None = None, on_bad_rows: str = "error") -> dict[str, list]:
    """prompt and answer of every row of one file (a prompt set is small: read whole), through the reader layer."""
    layout = check_schema(path, read_schema(path, options), options)
    rows = {name: [] for name in COLUMNS}
    for values in layout.batches(path, 1000, options, on_bad_rows):
        for name in COLUMNS:
            rows[name].extend(values[name])
    if rows["answer"] and all(v is None for v in rows["answer"]):
        raise MiniQwenError(f"{path}: no row has an 'answer' ({COLUMNS['answer']}); GRPO scores answers against "
                            f"it. Add it to every row, or name the column with --columns answer=COLUMN.")
    return rows


def row_name(path: Path, index: int) -> str:
    """How messages name a row: the file and its 0-based row, as every stage's bad-row message does."""
    return f"{path}: row {index}"


def build_dataset(files: list[Path], tokenizer, max_prompt_length: int, on_bad_rows: str = "skip",
                  source: str = "", log=print, max_prompts: int | None = None, options: dict | None = None):
    """The training rows (prompt: chat-format text, answer, row) and {reason: count} of the skipped ones."""
    import datasets

    rows = {"prompt": [], "answer": [], "row": []}
    skipped: dict[str, int] = {}
    for path in files:
        values = read_rows(path, options, on_bad_rows)
        problems = row_problems(values)
        lengths = prompt_lengths(tokenizer, values["prompt"])
        for i, (prompt, answer, problem) in enumerate(zip(values["prompt"], values["answer"], problems)):
            if problem is None and lengths[i] > max_prompt_length:
                problem = f"prompt longer than --max_prompt_length {max_prompt_length} tokens"
            if problem:
                if on_bad_rows == "error":
                    raise MiniQwenError(common.bad_row_message(path, i, problem))
                reason = common.fold_digits(problem)
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            rows["prompt"].append(format_prompt(prompt))
            rows["answer"].append(str(answer))
            rows["row"].append(row_name(path, i))
    dataset = datasets.Dataset.from_dict(rows)
    log(f"data: {len(dataset)} prompts from {len(files)} file(s) under {source or files[0].parent}")
    common.log_skipped_or_stop(dataset, skipped, log, f"no usable prompt in {source or files[0].parent}: "
                                                      f"every row was skipped (see the counts above).")
    if max_prompts is not None and max_prompts < len(dataset):
        dataset = dataset.select(range(max_prompts))
        log(f"data: training on the first {len(dataset)} prompts (--max_prompts)")
    return dataset, skipped
