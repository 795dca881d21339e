"""What a run has saved, and the one way to read it back: used by the runner, resume and export.

A checkpoint ``checkpoints/<k>/`` is the student after iteration ``k``: the removal order plus the
tensors of every module that differs from the teacher's (healed or bridged layers, an untied head),
named by original layer index. A partial checkpoint ``checkpoints/partial-<k>-<step>/`` is the
healing state in the middle of iteration ``k``.

Durability (what survives a kill or a power cut at any instruction):
  * a checkpoint directory is built under a dot-name, every file and the directory fsynced, then
    renamed into place and the parent fsynced; only then does ``LATEST`` (or ``PARTIAL``) point at it;
  * every file's size and sha256 are recorded in its manifest, so a truncated or altered file is
    found on reading, and reading falls back to the newest checkpoint that verifies, saying so;
  * nothing here unpickles code: tensors are safetensors, the optimiser state loads with
    ``torch.load(weights_only=True)``, pointers are plain names inside ``checkpoints/``.

Which tensors a checkpoint holds: ``engine.checkpoint_tensors``; its files' digests and their check:
``engine.checkpoint_files``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import faults
from engine.checkpoint_files import CheckpointError, describe, fsync_file, plain_name, reason, verify_files
from engine.checkpoint_tensors import layer_group, load_module_tensors, module_tensors
from engine.models.surgery import layer_map, remove_layers
from engine.runlog._fileio import fsync_dir, is_real_dir
from engine.runlog.atomic import read_json, write_json_atomic, write_text_atomic
from engine.runlog.layout import RunDir
from engine.runlog.safefile import UnsafeFile, read_regular

log = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
PARTIAL_MANIFEST = "partial.json"
TENSORS = "layers.safetensors"
HEAL_STATE = "heal_state.pt"
PARTIAL_PREFIX = "partial-"
FORMAT = 2


@dataclass
class Checkpoint:
    """A verified checkpoint: what the student is after ``iteration``."""

    name: str
    iteration: int
    removed: list[dict]  # {"iteration", "layer", "by", "proposed"} in removal order
    modified: list[str] = field(default_factory=list)  # tensor groups that differ from the teacher
    extra: dict = field(default_factory=dict)  # anything else the recipe keeps (one-shot scores, ...)
    path: Path | None = None
    note: str | None = None  # set when this is a fallback for an unreadable LATEST
    files: dict = field(default_factory=dict)  # name -> {"bytes", "sha256"}, as its manifest records them

    @property
    def removed_layers(self) -> list[int]:
        return [r["layer"] for r in self.removed]


@dataclass
class Partial:
    """Healing state saved in the middle of an iteration."""

    iteration: int
    step: int
    decision: dict
    trainable: list[int]
    state: dict  # tensors and optimiser state (torch.load with weights_only=True)
    extra: dict = field(default_factory=dict)
    path: Path | None = None


# --- the store --------------------------------------------------------------------------------------
class CheckpointStore:
    def __init__(self, run_dir: str | os.PathLike):
        self.rundir = RunDir(run_dir)
        self.root = self.rundir.checkpoints_dir

    # writing ------------------------------------------------------------------------------------
    def save(self, iteration: int, removed: list[dict], model, modified: list[str], extra: dict | None = None) -> Path:
        """Write checkpoint ``iteration`` whole, then point ``LATEST`` at it."""
        from safetensors.torch import save_file

        tensors = module_tensors(model, modified)
        manifest = {
            "format": FORMAT,
            "name": str(iteration),
            "iteration": iteration,
            "removed": removed,
            "layer_map": layer_map(model),
            "modified": modified,
            "extra": extra or {},
        }

        def write(tmp: Path) -> dict:
            files = {}
            if tensors:
                save_file(tensors, str(tmp / TENSORS))
                files[TENSORS] = describe(tmp / TENSORS)
            return files

        path = self._write_dir(str(iteration), MANIFEST, manifest, write)
        self.rundir.set_latest(str(iteration))
        self.drop_partials()
        return path

    def save_partial(
        self, iteration: int, step: int, decision: dict, trainable: list[int], state: dict, extra: dict | None = None
    ) -> Path:
        """Write the healing state of iteration ``iteration`` at ``step``, then point ``PARTIAL`` at it."""
        name = f"{PARTIAL_PREFIX}{iteration}-{step}"
        manifest = {
            "format": FORMAT,
            "iteration": iteration,
            "step": step,
            "decision": decision,
            "trainable": trainable,
            "extra": extra or {},
        }

        def write(tmp: Path) -> dict:
            torch.save(state, tmp / HEAL_STATE)
            return {HEAL_STATE: describe(tmp / HEAL_STATE)}

        path = self._write_dir(name, PARTIAL_MANIFEST, manifest, write)
        write_text_atomic(self.rundir.partial_file, name + "\n")
        for old in self.root.glob(f"{PARTIAL_PREFIX}*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def _write_dir(self, name: str, manifest_name: str, manifest: dict, write: Callable[[Path], dict]) -> Path:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.root / name
        tmp = self.root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o700)
        try:
            files = write(tmp)
            write_json_atomic(tmp / manifest_name, {**manifest, "files": files})
            for f in tmp.iterdir():
                fsync_file(f)
            fsync_dir(tmp)
            faults.point("checkpoint_write")
            if target.exists():
                # Not what LATEST/PARTIAL promise (those are never rewritten in place): a directory
                # left by a kill after its rename but before its pointer moved, or a redone iteration.
                aside = self.root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(target, aside)
                os.replace(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, target)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def drop_partials(self) -> None:
        (self.rundir.partial_file).unlink(missing_ok=True)
        for old in self.root.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(old, ignore_errors=True)

    def clean_leftovers(self) -> list[str]:
        """Remove half-written directories a killed engine left behind; return their names."""
        gone = []
        for pattern in (".tmp-*", ".old-*"):
            for path in self.root.glob(pattern):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                gone.append(path.name)
        return gone

    # reading ------------------------------------------------------------------------------------
    def latest(self, events: list[dict] | None = None) -> Checkpoint | None:
        """The checkpoint ``LATEST`` names, verified; else the newest one that verifies (with a note).

        For resume only: an export takes ``newest`` (no fallback). None for a fresh run (no LATEST and
        no checkpoint). Raises CheckpointError when ``LATEST`` promises a checkpoint and none can be
        read: resuming from scratch would silently redo the run. ``events`` (the run's log) adds the
        log's record of each checkpoint to what must verify.
        """
        recorded = recorded_checkpoints(events or [])
        named, problem = self._latest_name()
        # A LATEST that is a link or a FIFO is never followed, yet it promises a checkpoint.
        unsafe = problem is not None and problem.startswith("LATEST unsafe: ")
        if named:
            try:
                return self.load(named, recorded.get(named))
            except CheckpointError as exc:
                problem = str(exc)
        # A directory only gets its final name once it is whole, so any that verifies is a safe start.
        for name in sorted((c for c in self._checkpoint_names() if c != named), key=int, reverse=True):
            try:
                checkpoint = self.load(name, recorded.get(name))
            except CheckpointError:
                continue
            checkpoint.note = f"{problem}; using checkpoint {name}, the newest that verifies"
            return checkpoint
        if named or unsafe:
            raise CheckpointError(f"{problem}, and no other checkpoint verifies")
        return None

    def newest(self, events: list[dict], from_checkpoint: int | None = None) -> Checkpoint:
        """The run's newest checkpoint, verified against its manifest and the run's log, or
        CheckpointError naming what does not verify: what an export ships, so never a fallback.

        Newest is the highest iteration that the log records a checkpoint for, that ``LATEST`` names
        or that has a directory: a checkpoint that went missing or stopped verifying is an error,
        not a reason to ship the one before it. ``from_checkpoint`` takes an older one on purpose.
        """
        recorded = recorded_checkpoints(events)
        if from_checkpoint is not None:
            name = str(from_checkpoint)
            if name not in recorded and name not in self._checkpoint_names():
                raise CheckpointError(f"the run has no checkpoint {name}")
        else:
            latest, _ = self._latest_name()
            names = {*recorded, *self._checkpoint_names(), *([latest] if latest and latest.isdigit() else [])}
            if not names:
                raise CheckpointError("the run has no checkpoint yet: nothing to export")
            name = max(names, key=int)
        try:
            checkpoint = self.load(name, recorded.get(name))
        except CheckpointError as exc:
            older = "" if name == "0" else " (--from-checkpoint N exports an older one on purpose)"
            raise CheckpointError(f"{exc}; not exporting{older}") from None
        expected = logged_removals(events, checkpoint.iteration)
        if expected is not None and expected != [(r.get("iteration"), r["layer"]) for r in checkpoint.removed]:
            raise CheckpointError(
                f"checkpoint {name} records removals {checkpoint.removed_layers}, the run's log "
                f"{[layer for _, layer in expected]}; not exporting"
            )
        if not checkpoint.removed:
            raise CheckpointError(f"checkpoint {name} has no layer removed: it is the teacher, not a student")
        return checkpoint

    def _latest_name(self) -> tuple[str | None, str | None]:
        """(the name ``LATEST`` holds, why there is none)."""
        try:
            named = read_regular(self.rundir.latest_file, 4096).decode("utf-8").strip()
            return (named, None) if named else (None, "LATEST is empty")
        except (FileNotFoundError, NotADirectoryError):
            return None, "LATEST is missing"
        except UnsafeFile as exc:
            return None, f"LATEST unsafe: {exc}"
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"LATEST is unreadable ({reason(exc)})"

    def _checkpoint_names(self) -> list[str]:
        try:
            return [p.name for p in self.root.iterdir() if p.name.isdigit() and is_real_dir(p)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def load(self, name: str, recorded: dict | None = None) -> Checkpoint:
        """Checkpoint ``name``, verified: a real directory (no link), a manifest that is a regular
        file and, where the run's log recorded one (``recorded``: its ``checkpoint`` event), the
        manifest the log names; every file it lists with its size and SHA-256."""
        try:
            path = self.rundir.checkpoint_dir(name)
        except ValueError:
            raise CheckpointError(f"LATEST names {name!r}, which is not a checkpoint name") from None
        if os.path.islink(path):
            raise CheckpointError(f"checkpoint {name} is a symbolic link, not a directory of this run")
        if not is_real_dir(path):
            raise CheckpointError(f"checkpoint {name} is missing")
        try:
            raw = read_regular(path / MANIFEST)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {name} has no readable {MANIFEST} ({reason(exc)})") from None
        digest = recorded.get("manifest_sha256") if recorded else None
        if digest and hashlib.sha256(raw).hexdigest() != digest:
            raise CheckpointError(f"checkpoint {name}: {MANIFEST} is not the one the run's log recorded")
        try:
            manifest = json.loads(raw)
            iteration = int(manifest["iteration"])
            removed = [dict(r) for r in manifest["removed"]]
            for r in removed:
                int(r["layer"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {name}: {MANIFEST} is malformed") from None
        if str(iteration) != name:
            raise CheckpointError(f"checkpoint {name}: its manifest says iteration {iteration}")
        if manifest.get("format", 1) >= 2 and not isinstance(manifest.get("files"), dict):
            raise CheckpointError(f"checkpoint {name}: its manifest lists no files")
        verify_files(path, manifest, f"checkpoint {name}")
        if recorded and "removed" in recorded and recorded["removed"] != [r["layer"] for r in removed]:
            raise CheckpointError(f"checkpoint {name}: its removals are not those the run's log recorded")
        if manifest.get("format", 1) == 1:
            modified = [layer_group(o) for o in manifest.get("trained") or []]
            extra = {"one_shot_scores": manifest.get("one_shot_scores")} if manifest.get("one_shot_scores") else {}
        else:
            modified, extra = list(manifest.get("modified") or []), dict(manifest.get("extra") or {})
        return Checkpoint(
            name=name,
            iteration=iteration,
            removed=removed,
            modified=modified,
            extra=extra,
            path=path,
            files=dict(manifest.get("files") or {}),
        )

    def partial(self, iteration: int) -> Partial | None:
        """The partial checkpoint of ``iteration``, if ``PARTIAL`` names one that verifies."""
        pointer = self.rundir.partial_file
        try:
            name = read_regular(pointer, 4096).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not name.startswith(PARTIAL_PREFIX) or not plain_name(name):
            log.warning("ignoring PARTIAL: %r is not a partial checkpoint name", name[:80])
            return None
        path = self.root / name
        manifest = read_json(path / PARTIAL_MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("iteration") != iteration:
            return None
        try:
            verify_files(path, manifest, f"partial checkpoint {name}")
            state = torch.load(path / HEAL_STATE, weights_only=True, map_location="cpu")
            return Partial(
                iteration=iteration,
                step=int(manifest["step"]),
                decision=dict(manifest["decision"]),
                trainable=[int(j) for j in manifest["trainable"]],
                state=state,
                extra=dict(manifest.get("extra") or {}),
                path=path,
            )
        except Exception as exc:
            # The iteration is redone from its start: slower, never wrong.
            log.warning(
                "ignoring partial checkpoint %s: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            )
            return None

    # rebuilding a student -----------------------------------------------------------------------
    def restore(self, model, checkpoint: Checkpoint) -> None:
        """Make a freshly loaded teacher into the student of ``checkpoint``."""
        if checkpoint.removed:
            remove_layers(model, checkpoint.removed_layers)
        if checkpoint.path is None or (TENSORS not in checkpoint.files and not (checkpoint.path / TENSORS).is_file()):
            return
        from safetensors.torch import load as load_bytes

        try:
            data = read_regular(checkpoint.path / TENSORS)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {checkpoint.name}: {TENSORS} is unreadable ({reason(exc)})") from None
        expected = checkpoint.files.get(TENSORS)
        # The bytes used are the bytes verified: the file is read once, checked, then parsed.
        if expected is not None and hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            raise CheckpointError(f"checkpoint {checkpoint.name}: {TENSORS} does not match its checksum")
        load_module_tensors(model, load_bytes(data))


def manifest_digest(path: Path) -> str:
    """SHA-256 of a checkpoint's manifest, for the run's log: the log then vouches for the manifest,
    which vouches for the tensors."""
    return hashlib.sha256(read_regular(Path(path) / MANIFEST)).hexdigest()


def recorded_checkpoints(events: list[dict]) -> dict[str, dict]:
    """The run log's last ``checkpoint`` event of each (whole) checkpoint, by name."""
    return {
        str(e["name"]): e
        for e in events
        if e.get("type") == "checkpoint" and not e.get("partial") and isinstance(e.get("name"), str)
    }


def logged_removals(events: list[dict], iteration: int) -> list[tuple[int, int]] | None:
    """(iteration, layer) of each removal the log records up to ``iteration`` (one per iteration; an
    iteration redone after a kill counts as last logged), or None for a log that records none."""
    layers: dict[int, int] = {}
    for e in events:
        if e.get("type") == "layer_removed" and isinstance(e.get("iteration"), int) and isinstance(e.get("layer"), int):
            layers[e["iteration"]] = e["layer"]
    if not layers:
        return None
    return [(i, layers[i]) for i in sorted(layers) if i <= iteration]
