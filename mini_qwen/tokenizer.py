"""The exact Qwen2.5 tokenizer, built offline from Qwen's own BPE ranks.

Qwen ships its byte-level BPE as a tiktoken ranks file (`qwen.tiktoken`: one
`<base64 token bytes> <rank>` line per token). The Hugging Face files
(vocab.json / merges.txt / tokenizer.json) are a lossless conversion of it, so we
can rebuild them without the model hub:

* `fetch_qwen_tiktoken` takes `qwen.tiktoken` out of the PyPI wheel
  `dashscope==2.0.2` (downloaded with pip, checked by sha256, cached);
* `build_tokenizer` derives the merges by replaying BPE on every token, adds the
  22 special tokens and the chat template, and saves a `transformers` tokenizer;
* `load_tokenizer` finds a tokenizer folder (official files first, then ours),
  checks the chat tokens and sets the training chat template.

The chat template is the format SFT and DPO train on (`mini_qwen.chat.CHATML_TEMPLATE`), not the official
Qwen2.5 one: that one adds "You are Qwen, created by Alibaba Cloud..." as a system turn to every conversation
without one, a turn this project's models never saw. `load_tokenizer` sets it on every tokenizer it loads
(official files, ours, or an earlier checkpoint's), so every folder a stage or tool saves carries it and
`apply_chat_template` (transformers, vLLM, lm-eval) gives the ids the model was trained on.

Run `python -m mini_qwen.tokenizer` to build `models/tokenizer/`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

from mini_qwen.chat import CHATML_TEMPLATE
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.pip_fetch import REACH_PYPI, pip_download

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
OFFICIAL_DIR = MODELS_DIR / "qwen2.5-0.5b-instruct"
BUILT_DIR = MODELS_DIR / "tokenizer"
DEFAULT_CACHE = REPO_ROOT / ".cache"

DASHSCOPE_REQUIREMENT = "dashscope==2.0.2"
TIKTOKEN_MEMBER = "dashscope/resources/qwen.tiktoken"
TIKTOKEN_NAME = "qwen.tiktoken"
TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
N_RANKS = 151_643
N_MERGES = N_RANKS - 256

# Qwen2 pre-tokenizer split: like GPT-4's cl100k pattern but digits are split one
# by one (`\p{N}`, not `\p{N}{1,3}`).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (content, special) for ids 151643, 151644, ... in order, as in Qwen2.5's
# tokenizer_config.json. The last eight are added tokens but not "special"
# (they are not skipped by decode(skip_special_tokens=True)).
SPECIAL_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
# The official `additional_special_tokens`: the special ones except <|endoftext|>.
ADDITIONAL_SPECIAL_TOKENS = [tok for tok, special in SPECIAL_TOKENS[1:] if special]

# Tokens every stage relies on, with the ids the Qwen2.5 checkpoints use.
REQUIRED_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}

# --------------------------------------------------------------------------- fetch


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_qwen_tiktoken(cache_dir: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """Return `cache_dir/qwen.tiktoken`, downloading it from PyPI if needed.

    The file comes out of the `dashscope==2.0.2` wheel (fetched with `pip download`,
    never installed) and is checked against its known sha256.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / TIKTOKEN_NAME
    if target.is_file() and _sha256(target) == TIKTOKEN_SHA256:
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwen_tiktoken_") as tmp:
        fix = (f"Fix: {REACH_PYPI}, or put the official tokenizer files in models/qwen2.5-0.5b-instruct/ "
               "(`bash prepare.sh` downloads them).")
        wheel_path = pip_download(DASHSCOPE_REQUIREMENT, Path(tmp), source=False, pattern="dashscope-2.0.2-*.whl",
                                  what="Qwen's BPE ranks file", fix=fix)
        try:
            with zipfile.ZipFile(wheel_path) as wheel:
                data = wheel.read(TIKTOKEN_MEMBER)
        except (zipfile.BadZipFile, KeyError) as err:
            raise MiniQwenError(f"{wheel_path.name}: cannot read {TIKTOKEN_MEMBER} ({err}).") from None

    found = hashlib.sha256(data).hexdigest()
    if found != TIKTOKEN_SHA256:
        raise MiniQwenError(
            f"{TIKTOKEN_MEMBER} from {wheel_path.name} has sha256 {found}, expected {TIKTOKEN_SHA256}: "
            "the download is corrupt or the package index serves a different file. "
            "Check PIP_INDEX_URL, or use the official tokenizer files in models/qwen2.5-0.5b-instruct/."
        )
    partial = target.with_name(target.name + f".{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


# --------------------------------------------------------------------------- build


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE files."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse `<base64> <rank>` lines; ranks must be exactly 0..n-1."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                token_b64, rank_text = line.split()
                ranks[base64.b64decode(token_b64, validate=True)] = int(rank_text)
            except (ValueError, binascii.Error):
                raise MiniQwenError(f"{path}:{lineno}: expected '<base64 token> <rank>', got {line[:80]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise MiniQwenError(f"{path}: ranks are not a permutation of 0..{len(ranks) - 1} (duplicate tokens or gaps).")
    return ranks


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge that creates each multi-byte token, ordered by that token's rank.

    For a token of rank r, run BPE on its bytes with only the merges of rank < r;
    the two pieces left are the merge that makes it (the standard tiktoken -> HF
    conversion).
    """
    singles = [bytes([b]) for b in range(256)]
    merges: list[tuple[bytes, bytes]] = []
    get = ranks.get
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        n = len(token)
        if n < 2:
            continue
        if n == 2:
            merges.append((singles[token[0]], singles[token[1]]))
            continue
        parts = [singles[b] for b in token]
        # pair_ranks[i]: rank of parts[i] + parts[i+1] if usable (< rank), else None
        pair_ranks = []
        for i in range(n - 1):
            r = get(parts[i] + parts[i + 1])
            pair_ranks.append(r if r is not None and r < rank else None)
        while len(parts) > 2:
            best = None
            best_i = -1
            for i, r in enumerate(pair_ranks):
                if r is not None and (best is None or r < best):
                    best = r
                    best_i = i
            if best is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
            del pair_ranks[best_i]
            if best_i > 0:
                r = get(parts[best_i - 1] + parts[best_i])
                pair_ranks[best_i - 1] = r if r is not None and r < rank else None
            if best_i < len(parts) - 1:
                r = get(parts[best_i] + parts[best_i + 1])
                pair_ranks[best_i] = r if r is not None and r < rank else None
        if len(parts) != 2:
            raise MiniQwenError(
                f"token of rank {rank} ({token!r}) cannot be built from two lower-ranked tokens "
                f"(BPE stops at {len(parts)} pieces): the ranks file is not a BPE vocabulary."
            )
        merges.append((parts[0], parts[1]))
    return merges


def _write_vocab_and_merges(out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    # Same layout as the official files: compact JSON in id order, no merges header.
    with open(out_dir / "vocab.json", "w", encoding="utf-8", newline="\n") as handle:
        json.dump(vocab, handle, ensure_ascii=False, separators=(",", ":"))
    with open(out_dir / "merges.txt", "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(f"{a} {b}\n" for a, b in merges)


def build_tokenizer(tiktoken_path: str | os.PathLike, out_dir: str | os.PathLike = BUILT_DIR) -> Path:
    """Convert `qwen.tiktoken` into a Qwen2.5 tokenizer folder; return `out_dir`.

    Writes tokenizer.json, tokenizer_config.json, chat_template.jinja, vocab.json
    and merges.txt; `AutoTokenizer.from_pretrained(out_dir)` loads it offline.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tiktoken_path = Path(tiktoken_path)
    out_dir = Path(out_dir)
    if not tiktoken_path.is_file():
        raise MiniQwenError(f"{tiktoken_path}: no such file (get it with fetch_qwen_tiktoken()).")
    ranks = read_tiktoken_ranks(tiktoken_path)
    if len(ranks) != N_RANKS:
        raise MiniQwenError(f"{tiktoken_path}: {len(ranks)} tokens, expected {N_RANKS} for Qwen2.5.")

    byte_chars = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_chars[b] for b in token)

    vocab = {to_str(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    merges = [(to_str(a), to_str(b)) for a, b in derive_merges(ranks)]
    if len(merges) != N_MERGES:
        raise MiniQwenError(f"{tiktoken_path}: derived {len(merges)} merges, expected {N_MERGES}.")

    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.add_tokens(
        [AddedToken(content, special=special, normalized=False) for content, special in SPECIAL_TOKENS]
    )
    for offset, (content, _) in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(content) != N_RANKS + offset:
            raise MiniQwenError(f"internal error: {content} did not get id {N_RANKS + offset}.")

    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    # Qwen2Tokenizer is transformers 5's (only) Qwen2 tokenizer class: a
    # `tokenizers` backend. Given `tokenizer_object` it keeps our pipeline as is.
    # Do not pass add_bos_token/add_eos_token: any of them makes transformers 5
    # replace the ByteLevel post-processor with a TemplateProcessing one.
    hf_tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=ADDITIONAL_SPECIAL_TOKENS,
        add_prefix_space=False,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=131072,
        chat_template=CHATML_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(str(out_dir))
    # transformers 5 saves only tokenizer.json; keep the classic files as well.
    _write_vocab_and_merges(out_dir, vocab, merges)
    return out_dir


# --------------------------------------------------------------------------- load


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (
        (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())
    )


def load_tokenizer(path: str | os.PathLike | None = None):
    """Load the Qwen2.5 tokenizer, check its chat tokens and give it the training chat template.

    Order: `path` if given; else models/qwen2.5-0.5b-instruct/ (official files from
    prepare.sh); else models/tokenizer/ (built by `python -m mini_qwen.tokenizer`).
    """
    if path is not None:
        path = Path(path)
        if not has_tokenizer_files(path):
            what = "does not exist" if not path.exists() else "has no tokenizer files"
            raise MiniQwenError(
                f"tokenizer path {path} {what} (expected tokenizer.json, or vocab.json + merges.txt). "
                "Point it at a Qwen2.5 tokenizer folder, or build one with `python -m mini_qwen.tokenizer`."
            )
    elif has_tokenizer_files(OFFICIAL_DIR):
        path = OFFICIAL_DIR
    elif has_tokenizer_files(BUILT_DIR):
        path = BUILT_DIR
    else:
        raise MiniQwenError(
            f"No tokenizer found in {OFFICIAL_DIR} or {BUILT_DIR}: run `bash setup.sh` "
            "(builds models/tokenizer offline) or `python -m mini_qwen.tokenizer`."
        )

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # corrupt / incompatible files: say which folder
        raise MiniQwenError(f"cannot load the tokenizer in {path}: {type(err).__name__}: {err}") from None

    for token, expected_id in REQUIRED_TOKENS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        ids = tokenizer.encode(token, add_special_tokens=False)
        if token_id != expected_id or ids != [expected_id]:
            raise MiniQwenError(
                f"tokenizer in {path} is not a Qwen2.5 tokenizer: {token} should be the single token "
                f"{expected_id}, got id {token_id} / encoding {ids[:8]}. Use the official files or rebuild "
                "with `python -m mini_qwen.tokenizer --force`."
            )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    # Whatever template the folder carries (the official one, or an older checkpoint's), the model is trained
    # and served in this one; save_pretrained writes it as chat_template.jinja.
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mini_qwen.tokenizer",
        description="Build the exact Qwen2.5 tokenizer offline from qwen.tiktoken (fetched from PyPI).",
    )
    parser.add_argument("--out", type=Path, default=BUILT_DIR, help="output folder (default: models/tokenizer)")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where qwen.tiktoken is cached (default: .cache)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if --out already holds a tokenizer")
    args = parser.parse_args(argv)

    if not args.force and (args.out / "tokenizer.json").is_file() and (args.out / "tokenizer_config.json").is_file():
        print(f"tokenizer already in {args.out} (use --force to rebuild)")
        return 0
    start = time.perf_counter()
    tiktoken_path = fetch_qwen_tiktoken(args.cache)
    fetched = time.perf_counter()
    build_tokenizer(tiktoken_path, args.out)
    done = time.perf_counter()
    print(
        f"built Qwen2.5 tokenizer in {args.out}: vocab {N_RANKS} + {len(SPECIAL_TOKENS)} special = "
        f"{N_RANKS + len(SPECIAL_TOKENS)} tokens, {N_MERGES} merges, "
        f"{done - start:.1f}s (fetch {fetched - start:.1f}s, build {done - fetched:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
