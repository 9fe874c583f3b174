#!/usr/bin/env bash
# Download the model files and the PT / SFT / DPO data from ModelScope.
#
# Run as:
#   bash prepare.sh                                   # everything, the original project's selection
#   bash prepare.sh --dry-run                         # print the plan only
#   bash prepare.sh --what model,sft --files-per-folder 1   # small laptop set
#
# The file selection lives in utils/prepare_select.py (tested in tests/test_prepare.py).
# Each file is fetched with `modelscope download --repo-type ... REPO FILE --local-dir DIR`
# and then marked complete, so re-running resumes where a failed run stopped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

WHAT="model,pt,sft,dpo"
INDUSTRIES="mathematics_statistics,artificial_intelligence_machine_learning,computer_programming_code,news_media,accommodation_catering_hotel,tourism_geography,film_entertainment,literature_emotion,computer_communication,current_affairs_government_administration"
LANGUAGES="chinese,english"
FILES_PER_FOLDER=""
DEST="$ROOT/data"
MODEL_DEST="$ROOT/models/qwen2.5-0.5b-instruct"
DRY_RUN=0

usage() {
    cat <<EOF
Usage: bash prepare.sh [options]

Downloads from ModelScope (modelscope.cn):
  model  Qwen/Qwen2.5-0.5B-Instruct: config.json, generation_config.json, tokenizer.json,
         tokenizer_config.json, vocab.json, merges.txt (no weights)   -> --model-dest
  pt     BAAI/IndustryCorpus2: <industry>/<language>/high/*.parquet   -> <dest>/pt
         (only the first 3 files of the five large English folders: film_entertainment,
         literature_emotion, computer_communication, current_affairs_government_administration,
         mathematics_statistics)
  sft    BAAI/Infinity-Instruct: folders 7M and Gen                    -> <dest>/sft
  dpo    BAAI/Infinity-Preference: all files                           -> <dest>/dpo

Options (defaults reproduce the original project's data):
  --what LIST              comma-separated subset of model,pt,sft,dpo (default: $WHAT)
  --industries LIST        comma-separated IndustryCorpus2 industries for pt
                           (default: the ten of the original project)
  --languages LIST         chinese, english or both (default: $LANGUAGES)
  --files-per-folder N     at most the first N files of each pt folder and of each sft
                           folder (7M, Gen); the large English pt folders stay capped at 3
                           (default: all files)
  --dest DIR               data folder; pt, sft and dpo go to DIR/pt, DIR/sft, DIR/dpo
                           (default: data/ in the repository)
  --model-dest DIR         folder for the model config and tokenizer files
                           (default: models/qwen2.5-0.5b-instruct in the repository)
  --dry-run                print the plan (folders, file counts, sizes) and download nothing
  --help, -h               show this help

Re-running skips complete files (a file with the listed size, or with its marker in
<dir>/.prepare_done/). A failed download names the file and exits non-zero; run the same
command again to resume.

Environment:
  PYTHON                      Python with modelscope installed (default: .venv/bin/python, else python3)
  MINI_QWEN_PREPARE_LISTING   JSON file {repo_id: [paths or {"path","size"}]} used instead of
                              the ModelScope file listing (offline planning, tests)
  MINI_QWEN_DOWNLOADER        command used instead of "\$PYTHON -m modelscope.cli.cli"; it is called
                              as: <cmd> download --repo-type TYPE --local-dir DIR REPO FILE
EOF
}

die() {
    echo "error: $*" >&2
    exit 2
}

need_value() {
    # $1 = flag, $2 = number of remaining args including the flag
    [[ "$2" -ge 2 ]] || die "$1 needs a value (see bash prepare.sh --help)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --what) need_value "$1" $#; WHAT="$2"; shift 2 ;;
        --what=*) WHAT="${1#*=}"; shift ;;
        --industries) need_value "$1" $#; INDUSTRIES="$2"; shift 2 ;;
        --industries=*) INDUSTRIES="${1#*=}"; shift ;;
        --languages) need_value "$1" $#; LANGUAGES="$2"; shift 2 ;;
        --languages=*) LANGUAGES="${1#*=}"; shift ;;
        --files-per-folder) need_value "$1" $#; FILES_PER_FOLDER="$2"; shift 2 ;;
        --files-per-folder=*) FILES_PER_FOLDER="${1#*=}"; shift ;;
        --dest) need_value "$1" $#; DEST="$2"; shift 2 ;;
        --dest=*) DEST="${1#*=}"; shift ;;
        --model-dest) need_value "$1" $#; MODEL_DEST="$2"; shift 2 ;;
        --model-dest=*) MODEL_DEST="${1#*=}"; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see bash prepare.sh --help)" ;;
    esac
done

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="python3"
fi
command -v "$PY" >/dev/null 2>&1 || die "Python '$PY' not found: set PYTHON=/path/to/python or create .venv (pip install -r requirements.txt)"

PLAN="$(mktemp "${TMPDIR:-/tmp}/mini_qwen_prepare.XXXXXX")"
trap 'rm -f "$PLAN"' EXIT

plan_args=(--what "$WHAT" --industries "$INDUSTRIES" --languages "$LANGUAGES"
           --files-per-folder "$FILES_PER_FOLDER" --dest "$DEST" --model-dest "$MODEL_DEST" --tsv "$PLAN")
if [[ "$DRY_RUN" -eq 1 ]]; then
    plan_args+=(--dry-run)
fi
# Prints the plan; exits 2 with one "error: ..." line on bad flags or a failed listing.
"$PY" "$ROOT/utils/prepare_select.py" plan "${plan_args[@]}"

if [[ "$DRY_RUN" -eq 1 ]]; then
    exit 0
fi
TOTAL="$(wc -l < "$PLAN" | tr -d ' ')"
if [[ "$TOTAL" -eq 0 ]]; then
    echo "nothing to download: every selected file is already complete"
    exit 0
fi

if [[ -n "${MINI_QWEN_DOWNLOADER:-}" ]]; then
    read -r -a DOWNLOADER <<< "$MINI_QWEN_DOWNLOADER"
else
    "$PY" -c "import modelscope" 2>/dev/null \
        || die "the modelscope package is not installed for $PY: pip install modelscope==1.40.2 (see requirements.txt)"
    DOWNLOADER=("$PY" -m modelscope.cli.cli)
fi

n=0
while IFS=$'\t' read -r what repo_type repo_id path local_dir size; do
    n=$((n + 1))
    echo "[$n/$TOTAL] $what: $repo_id $path -> $local_dir/$path"
    if [[ -e "$local_dir/$path" ]]; then
        # Not complete (wrong size or no marker): the downloader would take it as cached.
        echo "    replacing the incomplete local copy"
        rm -f -- "$local_dir/$path"
    fi
    rc=0
    "${DOWNLOADER[@]}" download --repo-type "$repo_type" --local-dir "$local_dir" "$repo_id" "$path" </dev/null || rc=$?
    if [[ "$rc" -ne 0 ]]; then
        echo "error: download failed (exit $rc) for $what file $path from $repo_type $repo_id into $local_dir." >&2
        echo "       Check the messages above (network, disk space, access); run the same command again to resume:" >&2
        echo "       $((n - 1)) file(s) of this run are complete and will be skipped." >&2
        exit 1
    fi
    # Checks the file arrived (with the listed size) and writes its .done marker.
    "$PY" "$ROOT/utils/prepare_select.py" mark --local-dir "$local_dir" --path "$path" --size "$size" </dev/null
done < "$PLAN"

echo "done: $n file(s) downloaded"
