"""``ild export --push-to-hub REPO``: the exported directory (model, tokenizer, model card) uploaded
to a Hub model repository with huggingface_hub. Refused in one line when the Hub is switched off
(``HF_HUB_OFFLINE``), before anything is exported."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


class PushRefused(Exception):
    """The upload cannot be done; the message is one line."""


def push_problem(repo: str) -> str | None:
    """Why ``repo`` cannot be pushed to from here (checked before the export), or None."""
    if not REPO_ID.match(repo) or "--" in repo or ".." in repo:
        return f"--push-to-hub {repo}: not a Hub repository id (OWNER/NAME)"
    if any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, the Hub is switched off; nothing exported or uploaded"
    return None


def push_folder(folder: Path, repo: str, private: bool = False) -> str:
    """Create ``repo`` (a model repository; kept if it exists) and upload ``folder`` as one commit.
    Returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo, repo_type="model", commit_message="Upload an ild student"
        )
    except Exception as exc:  # network, authentication, permissions: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PushRefused(f"--push-to-hub {repo}: {first}") from None
    return str(getattr(commit, "commit_url", commit))
