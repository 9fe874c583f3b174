"""Loader of the mini_ceval task (lm-eval calls it through `custom_dataset:` in mini_ceval.yaml)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(**_metadata):
    """{"val": 20 questions, "dev": 5 few-shot examples}; lm-eval passes the task metadata, unused here."""
    import datasets

    files = {"val": str(HERE / "mini_ceval_val.jsonl"), "dev": str(HERE / "mini_ceval_dev.jsonl")}
    return datasets.load_dataset("json", data_files=files)
