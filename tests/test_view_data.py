"""utils/view_data.py: the first rows and the schema of parquet files, on the real samples (tests/data/baai)
and on synthetic files; bad paths and flags end in one message."""

import subprocess
import sys

from conftest import BAAI_SAMPLES, REPO_ROOT, cli_error, load_script

view_data = load_script("utils/view_data.py")


def test_view_data_on_the_reference_samples(capsys):
    assert view_data.main([str(BAAI_SAMPLES / "pt"), "--rows", "2", "--max-chars", "40"]) == 0
    out = capsys.readouterr().out
    assert "2 parquet file(s), 200 rows" in out and "text: string" in out and "PT text corpus" in out
    assert "住宿_餐饮_酒店" in out  # ensure_ascii=False
    assert out.count("-- row ") == 2 and "chars]" in out

    assert view_data.main([str(BAAI_SAMPLES / "sft"), "--rows", "1", "--columns", "id,conversations"]) == 0
    out = capsys.readouterr().out
    assert '"conversations"' in out and '"label"' not in out and "SFT chat data" in out

    assert view_data.main([str(BAAI_SAMPLES / "dpo" / "train-00000-of-00001.parquet"), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert '"chosen"' in out and '"rejected"' in out and "DPO preference data" in out


def test_view_data_reads_across_files_and_truncates(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d" / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["x" * 1000, "short"], "n": [1, 2]}), tmp_path / "d" / "a.parquet")
    pq.write_table(pa.table({"text": ["third"], "n": [3]}), tmp_path / "d" / "sub" / "b.parquet")
    assert view_data.main([str(tmp_path / "d"), "--rows", "3", "--max-chars", "10"]) == 0
    out = capsys.readouterr().out
    assert '"xxxxxxxxxx… [+990 chars]"' in out and '"third"' in out and "schema: same as above" in out


def test_view_data_errors(tmp_path, capsys):
    assert "does not exist" in cli_error(view_data.main, [str(tmp_path / "nope")], capsys)
    assert "no data files matching" in cli_error(view_data.main, [str(tmp_path)], capsys)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert "is not a parquet file" in cli_error(view_data.main, [str(bad)], capsys)
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a"]}), good)
    err = cli_error(view_data.main, [str(good), "--columns", "text,prompt"], capsys)
    assert "no column 'prompt'" in err and "its columns are: text" in err
    assert "--rows must be at least 1" in cli_error(view_data.main, [str(good), "--rows", "0"], capsys)


def test_view_data_cli_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "utils" / "view_data.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
