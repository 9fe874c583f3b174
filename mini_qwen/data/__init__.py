"""The data subsystem: everything between a user's data files and the batches a stage trains on.

    files.py    the one reader of data files: parquet, jsonl / json, csv / tsv, txt, their .gz / .zst,
                datasets Arrow folders; schema, row counts, batches of rows, column bytes
    common.py   what the three stage modules share: schemas (RowSchema, Layout) and their detection,
                parse-or-skip rows, SFT / DPO rows encoded into Arrow parts
    pt.py       PT data:  columns, schema check, bad rows, over-length rule, token cache, build_dataset
    sft.py      SFT data: the same face
    dpo.py      DPO data: the same face
    checks.py   the table of those three modules: the stage's one file check, utils/check_data.py's report
    packing.py  the PT token cache format and document-aware blocks; SFT conversations packed into rows
    prepare.py  the token cache of every stage: per-file parts in parallel, resumable, shardable over machines,
                and the stage's bounded wait for it (utils/prepare_data.py, --prepare_only)
"""
