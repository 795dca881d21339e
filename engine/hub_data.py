"""Every Hugging Face dataset a run reads, opened and one row read before the run directory exists.

Suite tasks (``source: {type: hf}``, and their few-shot split) and the healing data
(``heal.data=hf:...``) are checked here, in the process that creates the run: a dataset that cannot
be read is one line naming it, and no run directory is left behind. The Hub is asked once, with a
short timeout, before ``datasets`` is (whose retries take ~25 s when the Hub cannot be reached);
with ``HF_HUB_OFFLINE`` only the local cache is read, which fails in about a second.

``datasets`` >= 4 no longer runs dataset scripts (``IlyaGusev/rulm``, the paper's healing corpus,
is one): such a dataset gets one line saying so and how to point at its data files instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}
PROBE_TIMEOUT_S = 10.0
SCRIPT_ERROR = "Dataset scripts are no longer supported"


@dataclass(frozen=True)
class HubRef:
    """One dataset to open: what reads it (``what``, for the message) and how it is loaded."""

    what: str  # "task 'en_mmlu'", "heal.data"
    name: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    data_files: tuple[str, ...] | dict | None = None


def offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def parse_hf(source: str) -> tuple[str, str | None, str, tuple[str, ...] | None]:
    """``hf:NAME[:CONFIG[:SPLIT]][?data_files=PATTERN[,PATTERN...]]`` -> (name, config, split,
    data files). The data files may be local paths or ``hf://datasets/OWNER/NAME/...`` URLs."""
    body, _, query = source.removeprefix("hf:").partition("?")
    parts = body.split(":")
    name = parts[0]
    config = (parts[1] or None) if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    files = None
    if query:
        key, _, value = query.partition("=")
        if key != "data_files" or not value:
            raise ValueError(f"{source}: after '?' only data_files=PATTERN[,PATTERN] is understood")
        files = tuple(p for p in value.split(",") if p)
    if not name:
        raise ValueError(f"{source}: no dataset name after 'hf:'")
    return name, config, split, files


def is_local(ref: HubRef) -> bool:
    return ref.name in LOCAL_BUILDERS or Path(ref.name).exists()


def script_hint(ref: HubRef) -> str:
    where = "heal.data" if ref.what == "heal.data" else "the task's source"
    example = (
        f"heal.data=hf:json?data_files=hf://datasets/{ref.name}/PATH/*.jsonl (or hf:parquet?data_files=...), or a local .jsonl"
        if ref.what == "heal.data"
        else f"source: {{type: hf, name: json, data_files: {{{ref.split}: FILE}}}} with the dataset's files"
    )
    return (
        f"{ref.what}: dataset '{ref.name}' is a script dataset, which datasets>=4 no longer loads; "
        f"point {where} at its data files: {example}"
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _probe(ref: HubRef) -> None:
    """One request to the Hub with a timeout: unreachable, missing, gated or a script dataset is
    known here, before ``datasets`` retries for half a minute."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().dataset_info(ref.name, revision=ref.revision, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError:
        raise ValueError(
            f"{ref.what}: dataset '{ref.name}' is gated: accept its terms and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(f"{ref.what}: dataset '{ref.name}' not found on the Hub (or private: log in)") from None
    except RevisionNotFoundError:
        raise ValueError(f"{ref.what}: dataset '{ref.name}' has no revision '{ref.revision}'") from None
    except Exception as exc:  # network: httpx/requests errors, timeouts
        raise ValueError(
            f"{ref.what}: cannot reach the Hub for dataset '{ref.name}' ({_first_line(exc)}); "
            "set HF_HUB_OFFLINE=1 to read the local cache only"
        ) from None
    script = f"{ref.name.split('/')[-1]}.py"
    if not ref.data_files and any(s.rfilename == script for s in info.siblings or []):
        raise ValueError(script_hint(ref))


def read_one_row(ref: HubRef) -> dict:
    """Open the dataset (streaming: nothing is downloaded beyond what one row needs) and return its
    first row; ValueError (one line) if that cannot be done."""
    if not is_local(ref) and not offline():
        _probe(ref)
    try:
        import datasets

        files = list(ref.data_files) if isinstance(ref.data_files, tuple) else ref.data_files
        extra = {"data_files": files} if files else {}
        data = datasets.load_dataset(
            ref.name, ref.config, split=ref.split, revision=ref.revision, streaming=True, **extra
        )
        return dict(next(iter(data)))
    except StopIteration:
        raise ValueError(f"{ref.what}: dataset '{ref.name}' split '{ref.split}' has no rows") from None
    except Exception as exc:
        message = _first_line(exc)
        if SCRIPT_ERROR in message:
            raise ValueError(script_hint(ref)) from None
        if offline() and not is_local(ref):
            raise ValueError(
                f"{ref.what}: dataset '{ref.name}' is not in the local cache and HF_HUB_OFFLINE is set ({message})"
            ) from None
        raise ValueError(f"{ref.what}: cannot read dataset '{ref.name}': {message}") from None


def suite_refs(suite) -> list[HubRef]:
    """The Hub datasets a suite's tasks read (each split once), in task order."""
    from engine.tasks.spec import HubSource

    refs: dict[tuple, HubRef] = {}
    for task in suite.tasks:
        source = task.source
        if not isinstance(source, HubSource):
            continue
        for split in dict.fromkeys([source.split, task.few_shot_split] if task.few_shot_split else [source.split]):
            files = dict(source.data_files) if source.data_files else None
            key = (source.name, source.config, split, source.revision, tuple(sorted((files or {}).items())))
            refs.setdefault(
                key, HubRef(f"task '{task.name}'", source.name, source.config, split, source.revision, files)
            )
    return list(refs.values())


def check_suites(suites: list) -> None:
    """Open every Hub dataset the suites read and read one row of each; ValueError (one line) on
    the first that cannot be read."""
    for ref in (ref for suite in suites if suite is not None for ref in suite_refs(suite)):
        read_one_row(ref)


def heal_row(source: str) -> dict:
    """The first row of the healing data ``hf:...`` (see ``parse_hf``)."""
    name, config, split, files = parse_hf(source)
    return read_one_row(HubRef("heal.data", name, config, split, None, files))
