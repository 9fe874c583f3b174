"""The shape of the house (docs/ARCHITECTURE.md): one data module per stage with the same face, files
checked once, no import cycle, no sys.path edits, and loud failures when a private library internal
the code leans on changes. Static checks read source files only; the few runtime ones take seconds."""

import argparse
import ast
import inspect
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from mini_qwen import stages
from mini_qwen.errors import MiniQwenError

MINI = REPO_ROOT / "mini_data"


# --------------------------------------------------------------------------- import graph


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    files = sorted((REPO_ROOT / "mini_qwen").rglob("*.py")) + sorted(REPO_ROOT.glob("mini_qwen_*.py"))
    return {_module_name(p): p for p in files}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in its body (a function-level import still makes a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import mini_qwen.x.y` depends on the module that exists
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycle_in_the_package_or_the_stage_scripts():
    modules = _project_modules()
    graph = {name: _imports(path, name, set(modules)) for name, path in modules.items()}
    # A package's __init__ is imported with any of its modules; an edge into a bare package name is
    # only a cycle when the __init__ itself imports back, which the graph already shows.
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    # The scripts import the package, never each other; only the planner reads the stages' argument dataclasses
    # (it plans a stage from that stage's own flags).
    for script in (n for n in graph if n.startswith("mini_qwen_")):
        allowed = {"mini_qwen_pt", "mini_qwen_sft", "mini_qwen_dpo"} if script == "mini_qwen_plan" else set()
        assert not {d for d in graph[script] if d.startswith("mini_qwen_")} - allowed, script
    # The stage data modules do not import the checks that loop over them.
    for stage_module in (*(s.data for s in stages.STAGES), "mini_qwen.data.packing"):
        assert "mini_qwen.data.checks" not in graph[stage_module], stage_module


def test_scripts_never_edit_sys_path():
    """pyproject.toml makes mini_qwen installable (`pip install -e .` in setup.sh): no script patches sys.path."""
    scripts = (list(REPO_ROOT.glob("mini_qwen_*.py")) + list((REPO_ROOT / "demo").glob("*.py"))
               + list((REPO_ROOT / "utils").glob("*.py")) + list((REPO_ROOT / "bench").glob("*.py"))
               + list((REPO_ROOT / "tests").glob("*.py")))  # conftest.py too: pytest finds tests/ itself
    assert len(scripts) > 10 and REPO_ROOT / "tests" / "conftest.py" in scripts
    offenders = [str(p.relative_to(REPO_ROOT)) for p in scripts
                 if re.search(r"sys\.path\.(insert|append)|sys\.path\s*=", p.read_text(encoding="utf-8"))]
    assert not offenders, f"sys.path edited in {offenders}; import the installed package instead"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'include = ["mini_qwen", "mini_qwen.*"]' in pyproject
    assert "pip install -q --disable-pip-version-check --no-deps" in (REPO_ROOT / "setup.sh").read_text()


def test_tests_read_only_files_inside_the_repository():
    """A clone runs its whole suite with nothing beside it: the real samples, the official tokenizer files and the
    original run's logs are in tests/data, with their sources and licences in tests/data/README.md."""
    outside = re.compile(r"parents\[[2-9]\]|REPO_ROOT\.parent|\.\./|[\"']shared[\"'/]")
    offenders = [f"{p.name}:{n}" for p in sorted((REPO_ROOT / "tests").glob("*.py"))
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert not offenders, f"paths outside the repository in {offenders}; put the file in tests/data"
    data = REPO_ROOT / "tests" / "data"
    files = [p.relative_to(data) for p in data.rglob("*") if p.is_file()]
    assert sum((data / f).stat().st_size for f in files) < 10 * 2**20, "tests/data is meant to stay under ~10 MB"
    readme = (data / "README.md").read_text(encoding="utf-8")
    folders = {f.parts[0] for f in files if len(f.parts) > 1}
    assert folders == {"baai", "qwen2.5_tokenizer", "upstream_logs"}, folders
    for folder in folders:
        assert f"`{folder}/" in readme, f"tests/data/{folder} has no source and licence line in tests/data/README.md"


# --------------------------------------------------------------------------- one data module per stage


FACE = ("NAME", "WHAT", "FILES_MERGED", "columns", "check_schema", "row_problems", "overlong_rows", "build_dataset")


def test_every_stage_data_module_has_the_same_face():
    from mini_qwen.data.checks import STAGES

    assert list(STAGES) == stages.names()  # the table of stages, in its order
    shapes = {}
    for stage, module in STAGES.items():
        missing = [name for name in FACE if not hasattr(module, name)]
        assert not missing, f"{module.__name__} lacks {missing}"
        assert module.NAME == stage and module.__name__ == f"mini_qwen.data.{stage}"
        shapes[stage] = {name: list(inspect.signature(getattr(module, name)).parameters)
                         for name in ("columns", "check_schema", "row_problems", "overlong_rows")}
        build = list(inspect.signature(module.build_dataset).parameters)
        assert build[:2] == ["files", "tokenizer"] and {"on_bad_rows", "source", "log"} <= set(build), build
    assert len({str(shape) for shape in shapes.values()}) == 1, shapes
    # checks.py loops over the table: no function there switches on a stage name.
    source = (REPO_ROOT / "mini_qwen" / "data" / "checks.py").read_text()
    assert not re.search(r"""stage\s*[!=]=\s*["'](pt|sft|dpo)["']""", source)


def test_files_are_read_for_their_schema_once_per_run(tmp_path, tokenizer, monkeypatch):
    """The stage finds and checks its files once; the builder trusts the list and reads each schema no more."""
    import pyarrow.parquet as pq

    from mini_qwen.data import files as data_files
    from mini_qwen.data import pt as pt_data
    from mini_qwen.data.checks import find_stage_files

    calls = []
    real = pq.read_schema
    monkeypatch.setattr(data_files, "_SCHEMAS", {})  # a fresh run: nothing read yet in this process
    monkeypatch.setattr(pq, "read_schema", lambda path, *a, **k: calls.append(Path(path)) or real(path, *a, **k))
    files = find_stage_files("pt", str(MINI / "pt"))
    dataset, meta = pt_data.build_dataset(files, tokenizer, 64, cache_dir=str(tmp_path), log=lambda *_: None)
    assert len(dataset) > 0 and meta["documents"] > 0
    assert sorted(calls) == sorted(files), "each file's schema is read exactly once"


# Modules allowed to read or write data files themselves, and why.
OWN_DATA_FILES = {
    "mini_qwen/data/files.py": "the one reader layer",
    "mini_qwen/serve/votes.py": "writes the arena's votes.parquet and reads back only that file",
    "mini_qwen/tasks/mini_ceval/mini_ceval_data.py": "lm-eval's loader of the bundled benchmark task",
    "utils/make_mini_data.py": "writes mini_data/",
    "utils/save_mini_data.py": "cuts mini_data/ out of the real downloads, keeping their exact parquet layout",
}
READERS = re.compile(r"\bpq\.|pyarrow\.parquet|read_parquet|pyarrow\.(json|csv)\b|^\s*import csv\b|load_dataset\(|"
                     r"gzip\.open|CompressedInputStream|pa\.ipc\.", re.M)
# A data file by the names the modules that handle data files give it; their other open()s are the cache's own files.
OPENS_A_DATA_FILE = re.compile(r"\bopen\((path|f|file|data_file)\b|\b(path|data_file)\.read_(text|bytes)\(")
DATA_MODULES = ("mini_qwen/data/", "mini_qwen/plan_data.py", "mini_qwen/heldout.py", "utils/check_data.py",
                "utils/view_data.py", "utils/prepare_data.py")


def test_nothing_but_the_reader_layer_opens_data_files():
    """mini_qwen/data/files.py reads every data format; a stage, the planner or a tool that reads parquet (or jsonl,
    csv, ...) itself would skip the formats, the schema detection and the bad-line rules."""
    sources = [*sorted((REPO_ROOT / "mini_qwen").rglob("*.py")), *sorted(REPO_ROOT.glob("mini_qwen_*.py")),
               *sorted((REPO_ROOT / "utils").glob("*.py"))]
    offenders = []
    for path in sources:
        rel = str(path.relative_to(REPO_ROOT))
        if rel in OWN_DATA_FILES:
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{rel}: {m.group(0).strip()}" for m in READERS.finditer(text)]
        if rel.startswith(DATA_MODULES):
            offenders += [f"{rel}: {m.group(0)}" for m in OPENS_A_DATA_FILE.finditer(text)]
    assert not offenders, "read data files through mini_qwen/data/files.py: " + "; ".join(offenders)


def test_enumerated_flags_are_refused_by_the_parser_with_the_allowed_values():
    import mini_qwen_dpo
    import mini_qwen_pt
    import mini_qwen_sft
    from mini_qwen.cli import parse_args

    stages = {
        mini_qwen_pt: (mini_qwen_pt.PTDataArguments, mini_qwen_pt.PresetArguments, mini_qwen_pt.ModelArguments,
                       mini_qwen_pt.PTTrainingArguments),
        mini_qwen_sft: (mini_qwen_sft.SFTDataArguments, mini_qwen_sft.SFTModelArguments, mini_qwen_sft.MiniSFTConfig),
        mini_qwen_dpo: (mini_qwen_dpo.DPODataArguments, mini_qwen_dpo.DPOModelArguments, mini_qwen_dpo.MiniDPOConfig),
    }
    for types in stages.values():
        bad_rows_typo = r"--on_bad_rows.*invalid choice: 'eror' \(choose from 'skip', 'error'\)"
        with pytest.raises(MiniQwenError, match=bad_rows_typo):
            parse_args(types, ["--on_bad_rows", "eror", "--output_dir", "unused"])
        with pytest.raises(MiniQwenError, match=r"invalid choice: 'flash'.*'sdpa'"):
            parse_args(types, ["--attn_implementation", "flash", "--output_dir", "unused"])
    with pytest.raises(MiniQwenError, match=r"--packing: invalid choice: 'docs' \(choose from 'documents', 'concat'\)"):
        parse_args(stages[mini_qwen_pt], ["--packing", "docs", "--output_dir", "unused"])


# --------------------------------------------------------------------------- private library internals
# Each test pins one private TRL / transformers / argparse detail the code relies on, as it is in the
# versions of requirements.txt. When one fails after an upgrade, re-read the library and fix the code
# named in the test before changing the test.


def _pinned(package: str) -> str:
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==")[1].strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def test_trl_dpo_prepare_dataset_is_as_tokenized_dpo_trainer_expects():
    """mini_qwen_dpo.TokenizedDPOTrainer overrides DPOTrainer._prepare_dataset (written against TRL 1.16.0)."""
    import trl
    from trl import DPOTrainer

    from mini_qwen_dpo import TokenizedDPOTrainer

    assert trl.__version__ == _pinned("trl"), "TRL changed: re-check TokenizedDPOTrainer._prepare_dataset"
    params = list(inspect.signature(DPOTrainer._prepare_dataset).parameters)
    assert params == ["self", "dataset", "processing_class", "args", "dataset_name"], params
    assert params == list(inspect.signature(TokenizedDPOTrainer._prepare_dataset).parameters)
    assert "self._prepare_dataset(" in inspect.getsource(DPOTrainer.__init__), "DPOTrainer no longer calls the hook"


def test_trainer_prunes_columns_before_the_length_sampler_reads_them():
    """TokenizedDPOTrainer keeps `length` in `_signature_columns` (transformers 5.24 / TRL 1.16): Trainer drops
    the other columns before it builds the sampler, and the length-aware samplers read that column."""
    import transformers
    from transformers import Trainer
    from trl import DPOTrainer

    assert transformers.__version__ == _pinned("transformers")
    loader = inspect.getsource(Trainer._get_dataloader)
    assert loader.index("_remove_unused_columns") < loader.index("sampler_fn(dataset)")
    assert "self._signature_columns = [" in inspect.getsource(DPOTrainer._set_signature_columns_if_needed)
    assert "self.args.length_column_name" in inspect.getsource(Trainer._get_train_sampler)


def test_trl_sft_forces_padding_free_when_packing():
    """mini_qwen_sft sets args.packing False after packing itself: TRL 1.16's SFTTrainer would otherwise switch to
    its padding-free collator (and refuse ours) whenever packing is bfd."""
    import trl
    from trl import SFTTrainer

    assert trl.__version__ == _pinned("trl")
    init = inspect.getsource(SFTTrainer.__init__)
    assert 'args.padding_free or (args.packing and args.packing_strategy in {"bfd", "bfd_split"})' in init
    assert "Passing a custom data collator is not supported when using padding-free" in init


def test_trainer_compute_loss_reads_compute_loss_func():
    """mini_qwen_sft.AnswerLossSFTTrainer sets `self.compute_loss_func` after __init__ (transformers 5.24)."""
    import transformers
    from transformers import Trainer

    assert transformers.__version__ == _pinned("transformers")
    assert "self.compute_loss_func" in inspect.getsource(Trainer.compute_loss)


def test_config_attn_implementation_attribute():
    """mini_qwen.model.describe prints `config._attn_implementation` (transformers 5.24)."""
    from transformers import Qwen2Config

    assert Qwen2Config(attn_implementation="sdpa")._attn_implementation == "sdpa"


def test_argparse_actions_list():
    """mini_qwen.cli.parse_args and mini_qwen_eval read `parser._actions` to know every flag."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", choices=["a", "b"])
    assert [a.dest for a in parser._actions] == ["help", "flag"]


# --------------------------------------------------------------------------- one table of stages
# mini_qwen/stages.py is the only list of stages. A stage's OWN files may spell its name: its script
# mini_qwen_<s>.py, its data module mini_qwen/data/<s>.py, its demo demo/demo_<s>[_*].py + demo/<s>[_*].yaml and
# its tests tests/test_<s>.py. Everything else of the project's code (the package, the top-level scripts, utils/,
# demo/, run.sh, slurm/) holds no LIST of stages (a literal tuple / list / set / dict of two or more stage names,
# or a shell `a|b` of them), and the DISPATCHERS below (which launch, plan, prepare, check or demo any stage) spell
# no stage name at all. Not covered: tests/ and bench/ (they name the stage they test or measure), and the data
# downloaders (prepare.sh, utils/prepare_select.py, utils/make_mini_data.py), whose names are the upstream data
# sets' folders, not stages: a new stage touches none of them.
DISPATCHERS = ("run.sh", "slurm/mini_qwen.sbatch", "mini_qwen/nodes.py", "mini_qwen_plan.py", "utils/prepare_data.py",
               "utils/check_data.py", "mini_qwen/data/checks.py", "mini_qwen/data/prepare.py", "demo/demo_all.py",
               "mini_qwen/demo.py")
DATA_DOWNLOADERS = ("prepare.sh", "utils/prepare_select.py", "utils/make_mini_data.py")


def _own_files(name: str) -> set[str]:
    own = {f"mini_qwen_{name}.py", f"mini_qwen/data/{name}.py", f"demo/demo_{name}.py", f"demo/{name}.yaml",
           f"tests/test_{name}.py"}
    own |= {str(p.relative_to(REPO_ROOT)) for pattern in (f"demo/demo_{name}_*.py", f"demo/{name}_*.yaml")
            for p in REPO_ROOT.glob(pattern)}
    return own


def _code_files() -> list[Path]:
    files = [*(REPO_ROOT / "mini_qwen").rglob("*.py"), *REPO_ROOT.glob("mini_qwen_*.py"),
             *(REPO_ROOT / "utils").glob("*.py"), *(REPO_ROOT / "demo").glob("*.py"), *REPO_ROOT.glob("*.sh"),
             *(REPO_ROOT / "slurm").glob("*")]
    return sorted(p for p in files if p.is_file())


def _stage_lists(path: Path, names: set[str]) -> list[str]:
    """Places in `path` that list two or more stage names."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        alternation = r"\b({0})\s*\|\s*({0})\b".format("|".join(names))
        listing = r"\b({0})\s*,\s*({0})\b".format("|".join(names))
        return [f"line {text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
                for pattern in (alternation, listing) for m in re.finditer(pattern, text)]
    found = []
    for node in ast.walk(ast.parse(text)):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and items:
            spelled = [i.value for i in items if isinstance(i, ast.Constant) and i.value in names]
            if len(spelled) >= 2:
                found.append(f"line {node.lineno}: {spelled}")
    return found


def _spelled_names(path: Path, names: set[str]) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may give examples
        return [m.group(0) for m in re.finditer(r"(?<![\w./-])({})(?![\w/-])".format("|".join(names)), code)]
    spelled = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = [node.value]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):  # import mini_qwen_pt / from mini_qwen.data import pt
            words = [a.name for a in node.names] + ([node.module] if getattr(node, "module", None) else [])
        elif isinstance(node, ast.Name):
            words = [node.id]
        else:
            continue
        for word in words:  # a module name (mini_qwen_pt, mini_qwen.data.sft) spells the stage in it
            parts = re.split(r"[._]", word) if re.fullmatch(r"mini_qwen[\w.]*", word) else [word]
            spelled += [w for w in parts if w in names]
    return spelled


def test_the_table_of_stages_matches_the_files_on_disk():
    names = stages.names()
    assert len(names) == len(set(names)) >= 4
    for position, stage in enumerate(stages.STAGES):
        for own in ("mini_qwen_{}.py", "mini_qwen/data/{}.py", "demo/demo_{}.py", "demo/{}.yaml", "tests/test_{}.py"):
            path = own.format(stage.name)
            assert (REPO_ROOT / path).is_file(), f"stage {stage.name}: {path} missing"
        arguments = stage.arguments()
        assert {"data", "model", "training"} <= set(arguments), (stage.name, arguments)
        assert all(inspect.isclass(c) and hasattr(c, "__dataclass_fields__") for c in arguments.values())
        assert callable(stage.main()) and stage.data_module().NAME == stage.name
        assert stage.guard in stages.GUARDS and stage.plan in stages.PLAN_KINDS
        # a stage starts from an earlier stage's model, or builds one (and then picks the demo's preset)
        assert stage.starts_from in names[:position] if stage.starts_from else stage.demo_picks_preset
        assert f"output_dir: {stage.output}" in (REPO_ROOT / stage.demo_recipe).read_text()
    # every stage-shaped script (it exports its flags by role) is in the table
    scripts = {p.stem for p in REPO_ROOT.glob("mini_qwen_*.py") if "\nARGUMENTS = " in p.read_text()}
    assert scripts == {s.script for s in stages.STAGES}
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert all(f'"{s}"' in pyproject.split("py-modules")[1].split("\n")[0] for s in scripts), "py-modules"


def test_only_the_table_lists_the_stages():
    names = set(stages.names())
    own = {f for n in names for f in _own_files(n)}
    assert set(DISPATCHERS) <= {str(p.relative_to(REPO_ROOT)) for p in _code_files()}
    lists, spelled = {}, {}
    for path in _code_files():
        rel = str(path.relative_to(REPO_ROOT))
        if rel == "mini_qwen/stages.py" or rel in own or rel in DATA_DOWNLOADERS:
            continue
        if found := _stage_lists(path, names):
            lists[rel] = found
        if rel in DISPATCHERS and (found := _spelled_names(path, names)):
            spelled[rel] = found
    assert not lists, f"stage names listed outside mini_qwen/stages.py (read the table instead): {lists}"
    assert not spelled, f"a stage name spelled in a dispatcher (read mini_qwen/stages.py instead): {spelled}"


def test_the_checks_of_this_file_find_what_they_forbid(tmp_path):
    names = set(stages.names())
    py = tmp_path / "x.py"
    py.write_text('S = ("pt", "sft")\nif stage == "dpo":\n    import mini_qwen_grpo\n')
    assert _stage_lists(py, names) == ["line 1: ['pt', 'sft']"]
    assert sorted(_spelled_names(py, names)) == ["dpo", "grpo", "pt", "sft"]
    sh = tmp_path / "x.sh"
    sh.write_text('case "$s" in pt|sft) ;; esac  # e.g. bash run.sh grpo\nls results/pt\n')
    assert _stage_lists(sh, names) == ["line 1: pt|sft"] and _spelled_names(sh, names) == ["pt", "sft"]
