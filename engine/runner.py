"""score -> propose -> decide -> remove -> (heal) -> evaluate -> checkpoint, until the target depth.

The runner is the only writer of a run directory. Everything it learns goes out as events
(layers always named by their original teacher index); ``state.json`` and ``checkpoints/<k>/``
let a new engine continue where a dead one stopped.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.config import RunConfig
from engine.control import Controller, Decision, StopRequested
from engine.models.adapters import adapter_for
from engine.models.export import export_model
from engine.models.loading import load_model, model_version
from engine.models.surgery import layer_map, parameter_count, remove_layers
from engine.runlog.atomic import read_json, write_json_atomic, write_text_atomic
from engine.runlog.events import EventWriter
from engine.runlog.layout import RunDir
from engine.runlog.state import write_state
from engine.strategies import get_strategy
from engine.tasks.evaluate import SuiteEvaluator, aggregate
from engine.tasks.requests import ScoredSequence
from engine.tasks.sources import read_rows
from engine.tasks.spec import EmbeddedSource, FileSource, TaskSpec, load_suite

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"


@dataclass
class Progress:
    """Throttled progress as `phase` events: at most a few a second, never one per batch."""

    emit: callable
    iteration: int = 0
    phase: str = ""
    last: float = 0.0
    interval: float = 0.5
    extra: dict = field(default_factory=dict)

    control: object = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.control is not None:
            self.control.checkpoint()
        now = time.monotonic()
        if done < total and now - self.last < self.interval:
            return
        self.last = now
        self.emit("phase", iteration=self.iteration, phase=self.phase, detail=what, done=done, total=total, **self.extra)


class Runner:
    def __init__(self, run_dir: str | Path, config: RunConfig):
        self.rundir = RunDir(run_dir)
        self.config = config
        self.strategy = get_strategy(config.strategy)
        self.metric = config.importance_metric()
        self.writer: EventWriter | None = None
        self.iteration = 0
        self.removed: list[dict] = []  # {"iteration", "layer", "by", "proposed"} in order
        self.one_shot_scores: dict[int, float] | None = None  # original index -> score

    # --- events ---------------------------------------------------------------------------------
    def emit(self, type_: str, **fields):
        return self.writer.emit(type_, **fields)

    def say(self, message: str, level: str = "info") -> None:
        log.info(message)
        self.emit("log", level=level, message=message, iteration=self.iteration)

    # --- main loop ------------------------------------------------------------------------------
    def run(self) -> str:
        """Run to the end; returns the reason the run finished."""
        self.writer = EventWriter(self.rundir.events_file)
        self.control = Controller(self.rundir.path, self.emit, self.config.mode, self.config.auto_after_seconds,
                                  notify_cmd=self.config.notify_cmd, stall_seconds=self.config.stall_seconds)
        self.control.start_watchdog()
        try:
            return self._run()
        except StopRequested:
            self.emit("run_finished", reason="stopped", iteration=self.iteration, layers=adapter_for(self.model).num_layers,
                      removed=[r["layer"] for r in self.removed], params=parameter_count(self.model))
            self.control.notify("stopped", f"stopped at iteration {self.iteration}; continue with ild resume")
            return "stopped"
        except Exception as exc:
            self.control.notify("failed", f"{type(exc).__name__}: {exc}")
            self.emit("run_failed", error=f"{type(exc).__name__}: {exc}", hint=_hint(exc), iteration=self.iteration)
            raise
        finally:
            self.control.close()
            self.writer.close()

    def _run(self) -> str:
        config = self.config
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        checkpoint = self._latest_checkpoint()
        self.emit("engine_started", pid=os.getpid(), host=socket.gethostname(), resumed_from=checkpoint["name"] if checkpoint else None)
        self.progress = Progress(self.emit, control=self.control)
        self.control.checkpoint(force=True)

        self._phase("loading", f"loading {config.model}")
        loaded = load_model(config.model, device=config.device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.teacher_params = parameter_count(self.model)
        fresh = checkpoint is None and not self._has_event("run_started")
        if fresh:
            self.emit(
                "run_started",
                name=config.name,
                model=config.model,
                model_version=model_version(config.model),
                strategy=config.strategy,
                importance=self.metric,
                start_layers=config.start_layers,
                target_layers=config.target_layers,
                mode=config.mode,
                params=self.teacher_params,
                config=config.model_dump(),
            )
        if checkpoint:
            self._restore(checkpoint)

        suite = load_suite(config.suite)
        self._phase("preparing", f"tokenising suite '{suite.name}'")
        self.evaluator = SuiteEvaluator(self.model, self.tokenizer, suite, batch_tokens=config.batch_tokens)
        self.calibration = self._calibration_sequences() if self.metric in ("bi", "angular", "loss_nll", "loss_kl") else []
        self.teacher = None
        if self.metric == "loss_kl" or self.strategy.heal:
            self.teacher = load_model(config.model, device=config.device).model
        self.healer = self._make_healer() if self.strategy.heal else None

        if self.iteration == 0 and not self._has_event("eval", iteration=0, stage="teacher"):
            self._phase("evaluating", "teacher")
            scores = self.evaluator.evaluate([None], progress=self.progress)[None]
            self._eval_event(0, "teacher", scores)
            self._checkpoint()

        while adapter_for(self.model).num_layers > config.target_layers:
            partial = self._partial_checkpoint(self.iteration + 1)
            self.iteration += 1
            self.progress.iteration = self.iteration
            if partial is not None:
                decision = self._resume_partial(partial)
            else:
                decision = self._remove_one()
            if self.healer is not None:
                self._heal(decision, partial)
            self._checkpoint()

        self._phase("exporting", str(self.rundir.export_dir))
        self._export()
        self.emit(
            "run_finished",
            reason="target",
            layers=adapter_for(self.model).num_layers,
            params=parameter_count(self.model),
            removed=[r["layer"] for r in self.removed],
            export=str(self.rundir.export_dir),
            iteration=self.iteration,
        )
        self._write_state(finished=True)
        self.control.notify("finished", f"finished: {adapter_for(self.model).num_layers} layers, removed {[r['layer'] for r in self.removed]}")
        return "target"

    def _remove_one(self) -> Decision:
        ranked, per_task = self._score()
        proposal = ranked[0][0]
        self.emit(
            "proposal",
            iteration=self.iteration,
            layer=proposal,
            metric=self.metric,
            candidates=[
                {"layer": layer, "score": score, **({"tasks": per_task[layer]} if per_task else {})}
                for layer, score in ranked
            ],
        )
        decision = self.decide(proposal, ranked)
        self.emit("decision", iteration=self.iteration, layer=decision.layer, by=decision.by, proposed=proposal, command_id=decision.command_id)
        remove_layers(self.model, decision.layer)
        self.removed.append({"iteration": self.iteration, "layer": decision.layer, "by": decision.by, "proposed": proposal})
        self.emit(
            "layer_removed",
            iteration=self.iteration,
            layer=decision.layer,
            remaining=layer_map(self.model),
            layers=len(layer_map(self.model)),
            params=parameter_count(self.model),
        )
        if per_task and decision.layer in per_task:
            # Task drop already evaluated exactly this model (the shared prefix is exact).
            scores = per_task[decision.layer]
        else:
            self._phase("evaluating", "after removal")
            scores = self.evaluator.evaluate([None], progress=self.progress)[None]
        self._eval_event(self.iteration, "after_removal", scores)
        return decision

    # --- healing --------------------------------------------------------------------------------
    def _make_healer(self):
        from engine.distill.data import DataConfig, distill_blocks
        from engine.distill.heal import Healer, HealConfig, TeacherCache
        from engine.distill.losses import LossConfig
        from engine.distill.trainable import TrainableConfig

        h = self.config.heal
        self.heal_config = HealConfig(
            loss=LossConfig(kl_scale=h.kl_scale, mse_scale=h.mse_scale, kl_input=h.kl_input, direction=h.direction,
                            temperature=h.temperature, reduction=h.reduction, hidden=h.hidden, final_norm=h.final_norm),
            trainable=TrainableConfig(choice=h.trainable, k=h.trainable_k, train_norm=h.train_norm, train_head=h.train_head),
            data=DataConfig(source=h.data, text_field=h.text_field, seq_len=h.seq_len, train_tokens=h.train_tokens, heldout_tokens=h.heldout_tokens),
            lr=h.lr, warmup_steps=h.warmup_steps, batch_size=h.batch_size, grad_accum=h.grad_accum, clip=h.clip,
            cached=h.cached, fused_head=h.fused_head, head_matmul=h.head_matmul, teacher_topk=h.teacher_topk, cache_limit_mb=h.cache_limit_mb, checkpoint_every_s=h.checkpoint_every_s,
        )
        self._phase("preparing", "distillation data")
        try:
            train, heldout = distill_blocks(self.heal_config.data, self.tokenizer, seed=self.config.seed)
        except (ValueError, OSError) as exc:
            raise RuntimeError(f"distillation data: {exc}") from exc
        cache = TeacherCache(self.teacher, train, heldout, self.rundir.path / "cache", h.cache_limit_mb << 20, h.batch_size)
        self.trained: set[int] = getattr(self, "trained", set())
        return Healer(self.model, self.teacher, cache, self.heal_config)

    def _heal(self, decision: Decision, partial: dict | None) -> None:
        from engine.distill.heal import HealInterrupted, HealState, NonFiniteLoss
        from engine.distill.losses import hidden_pairs
        from engine.distill.trainable import choose_trainable

        mapping = layer_map(self.model)
        trainable = choose_trainable(mapping, self.config.start_layers, decision.layer, self.heal_config.trainable)
        pairs = hidden_pairs(self.heal_config.loss, trainable, len(mapping))
        self._phase("healing", f"layers {[mapping[j] for j in trainable]} (original)")
        self.progress("teacher cache", 0, 1)
        before = self.healer.heldout_loss(pairs)
        resume = None
        if partial is not None:
            state = torch.load(Path(partial["dir"]) / "heal_state.pt", weights_only=False)
            resume = HealState(step=partial["step"], optimizer=state["optimizer"], trainable=state["trainable"])

        def on_step(record: dict) -> None:
            self.emit("train_step", **record)

        def on_checkpoint(state) -> None:
            self._save_partial(decision, state, trainable)

        def interrupt() -> bool:
            try:
                self.control.checkpoint()
            except StopRequested:
                return True
            return False

        try:
            summary = self.healer.heal(trainable, self.iteration, self.config.seed, on_step=on_step,
                                       on_checkpoint=on_checkpoint, resume=resume, interrupt=interrupt)
            note = f"healed {summary['steps']} steps ({summary['tokens']} tokens) in {summary['seconds']:.0f}s"
        except HealInterrupted:
            raise StopRequested() from None
        except NonFiniteLoss as exc:
            note = f"healing stopped: {exc}; restored the weights from before this iteration's healing"
            self.emit("alert", level="error", message=note, iteration=self.iteration)
        self.trained.update(mapping[j] for j in trainable)
        after = self.healer.heldout_loss(pairs)
        self.say(f"{note}; held-out distillation loss {before['loss']:.4f} -> {after['loss']:.4f}")
        self._phase("evaluating", "after healing")
        scores = self.evaluator.evaluate([None], progress=self.progress)[None]
        self._eval_event(self.iteration, "after_healing", scores, heldout={"before": before, "after": after})

    # --- the decision point ---------------------------------------------------------------------
    def decide(self, proposal: int, ranked: list[tuple[int, float]]) -> Decision:
        """Auto takes the proposal; manual waits for a person; auto-after waits, then takes it."""
        return self.control.decide(self.iteration, proposal, layer_map(self.model), [{"layer": l, "score": v} for l, v in ranked])

    # --- scoring --------------------------------------------------------------------------------
    def _score(self) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        mapping = layer_map(self.model)
        per_task_orig: dict[int, dict[str, float]] = {}
        if not self.strategy.rescore and self.one_shot_scores is not None:
            scores = {o: self.one_shot_scores[o] for o in mapping}
            self.emit("importance", iteration=self.iteration, metric=self.metric, scores=_keyed(scores), reused=True)
        else:
            self._phase("scoring", self.metric)
            if self.metric == "task_drop":
                from engine.importance.scores import task_drop_scores

                drops, per_task, _current = task_drop_scores(self.evaluator, progress=self.progress)
                scores = {mapping[i]: v for i, v in drops.items()}
                per_task_orig = {mapping[i]: per_task[i] for i in per_task}
                by_task = {task: {str(mapping[i]): per_task[i][task] for i in per_task} for task in self.evaluator.task_names}
                self.emit("importance", iteration=self.iteration, metric=self.metric, scores=_keyed(scores), per_task=by_task,
                          aggregates={str(mapping[i]): aggregate(per_task[i]) for i in per_task})
            elif self.metric in ("bi", "angular"):
                from engine.importance.scores import similarity_scores

                both = similarity_scores(self.model, self.calibration, self.evaluator.pad_id, self.config.batch_tokens, self.progress)
                scores = {mapping[i]: v for i, v in both[self.metric].items()}
                other = "angular" if self.metric == "bi" else "bi"
                self.emit("importance", iteration=self.iteration, metric=self.metric, scores=_keyed(scores),
                          also={other: _keyed({mapping[i]: v for i, v in both[other].items()})})
            else:
                from engine.importance.scores import loss_drop_scores

                kind = self.metric.removeprefix("loss_")
                drops = loss_drop_scores(self.model, self.calibration, self.evaluator.pad_id, kind=kind, teacher=self.teacher,
                                         batch_tokens=self.config.batch_tokens, progress=self.progress)
                scores = {mapping[i]: v for i, v in drops.items()}
                self.emit("importance", iteration=self.iteration, metric=self.metric, scores=_keyed(scores))
            if not self.strategy.rescore:
                self.one_shot_scores = dict(scores)
        ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
        return ranked, per_task_orig

    def _calibration_sequences(self) -> list[ScoredSequence]:
        cal = self.config.calibration
        path = Path(cal.path)
        source = FileSource(type="jsonl", path=str(path)) if path.is_file() else EmbeddedSource(type="embedded", path=cal.path)
        spec = TaskSpec(name="calibration", kind="language_modeling", source=source, metric="next_token_accuracy", samples=cal.samples)
        sequences = []
        for i, row in enumerate(read_rows(spec, limit=cal.samples)):
            ids = self.tokenizer(row["text"])["input_ids"][: cal.max_tokens]
            if len(ids) >= 2:
                sequences.append(ScoredSequence(ids, list(range(len(ids) - 1)), ids[1:], item=i))
        return sequences

    # --- evaluation, checkpoints, export --------------------------------------------------------
    def _eval_event(self, iteration: int, stage: str, scores: dict[str, float], **extra) -> None:
        self.emit("eval", iteration=iteration, stage=stage, aggregate=aggregate(scores), tasks=scores,
                  layers=adapter_for(self.model).num_layers, params=parameter_count(self.model), **extra)

    def _checkpoint(self) -> None:
        """The removals, plus the weights of every layer healing has changed (by original index).

        A removal-only student is fully described by its removals, so it saves no weights.
        """
        from safetensors.torch import save_file

        name = str(self.iteration)
        target = self.rundir.checkpoint_dir(name)
        target.mkdir(parents=True, exist_ok=True)
        trained = sorted(getattr(self, "trained", set()))
        if trained:
            save_file(self._layer_tensors(trained), str(target / "layers.safetensors"))
        record = {
            "name": name,
            "iteration": self.iteration,
            "removed": self.removed,
            "layer_map": layer_map(self.model),
            "trained": trained,
            "one_shot_scores": _keyed(self.one_shot_scores) if self.one_shot_scores else None,
        }
        write_json_atomic(target / CHECKPOINT_FILE, record)
        self.rundir.set_latest(name)
        self._drop_partials()
        self.emit("checkpoint", iteration=self.iteration, name=name, path=str(target))
        self._write_state()

    def _layer_tensors(self, originals: list[int]) -> dict[str, torch.Tensor]:
        mapping = layer_map(self.model)
        adapter = adapter_for(self.model)
        out = {}
        for o in originals:
            if o in mapping:
                for pname, p in adapter.layers[mapping.index(o)].named_parameters():
                    out[f"{o}.{pname}"] = p.detach().to("cpu").contiguous()
        return out

    def _load_layer_tensors(self, path: Path) -> None:
        load_layer_tensors(self.model, path)

    # --- mid-iteration checkpoints ----------------------------------------------------------------
    def _save_partial(self, decision: Decision, state, trainable: list[int]) -> None:
        """Healing state every few minutes: a kill loses at most that much work."""
        root = self.rundir.checkpoints_dir
        target = root / f"partial-{self.iteration}-{state.step}"
        tmp = root / f".{target.name}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save({"optimizer": state.optimizer, "trainable": state.trainable}, tmp / "heal_state.pt")
        write_json_atomic(tmp / "partial.json", {
            "iteration": self.iteration, "step": state.step, "trainable": trainable,
            "decision": {"layer": decision.layer, "by": decision.by, "proposed": self.removed[-1]["proposed"] if self.removed else None},
        })
        if target.exists():
            # Left by an engine killed after renaming it but before PARTIAL pointed at it: resumed from
            # the earlier partial, this run reached the same step again; renaming onto it would fail.
            shutil.rmtree(target)
        os.replace(tmp, target)
        write_text_atomic(root / "PARTIAL", target.name)
        for old in root.glob("partial-*"):
            if old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)
        self.emit("checkpoint", iteration=self.iteration, name=target.name, path=str(target), partial=True, step=state.step)

    def _partial_checkpoint(self, iteration: int) -> dict | None:
        pointer = self.rundir.checkpoints_dir / "PARTIAL"
        if not pointer.is_file():
            return None
        directory = self.rundir.checkpoints_dir / pointer.read_text().strip()
        record = read_json(directory / "partial.json")
        if not record or record.get("iteration") != iteration:
            return None
        return {**record, "dir": str(directory)}

    def _resume_partial(self, partial: dict) -> Decision:
        d = partial["decision"]
        decision = Decision(layer=d["layer"], by=d["by"])
        remove_layers(self.model, decision.layer)
        self.removed.append({"iteration": self.iteration, "layer": decision.layer, "by": decision.by, "proposed": d.get("proposed")})
        self.say(f"resuming iteration {self.iteration} at healing step {partial['step']} (layer {decision.layer} already removed)")
        return decision

    def _drop_partials(self) -> None:
        root = self.rundir.checkpoints_dir
        (root / "PARTIAL").unlink(missing_ok=True)
        for old in root.glob("partial-*"):
            shutil.rmtree(old, ignore_errors=True)

    def _write_state(self, finished: bool = False) -> None:
        write_state(self.rundir, {
            "iteration": self.iteration,
            "removed": [r["layer"] for r in self.removed],
            "mapping": layer_map(self.model),
            "last_checkpoint": str(self.iteration),
            "mode": self.control.mode,
            "finished": finished,
        })

    def _latest_checkpoint(self) -> dict | None:
        path = self.rundir.latest_checkpoint()
        if path is None:
            return None
        record = read_json(Path(path) / CHECKPOINT_FILE)
        return record

    def _restore(self, checkpoint: dict) -> None:
        self.iteration = checkpoint["iteration"]
        self.removed = list(checkpoint["removed"])
        if self.removed:
            remove_layers(self.model, [r["layer"] for r in self.removed])
        self.trained = set(checkpoint.get("trained") or [])
        weights = Path(self.rundir.checkpoint_dir(checkpoint["name"])) / "layers.safetensors"
        if weights.is_file():
            self._load_layer_tensors(weights)
        if checkpoint.get("one_shot_scores"):
            self.one_shot_scores = {int(k): v for k, v in checkpoint["one_shot_scores"].items()}
        self.say(f"resumed from checkpoint {checkpoint['name']} (iteration {self.iteration}, removed {[r['layer'] for r in self.removed]})")

    def _export(self) -> None:
        export_model(self.model, self.tokenizer, self.rundir.export_dir, {
            "teacher": self.config.model,
            "strategy": self.config.strategy,
            "run": self.config.name,
            "removal_order": [r["layer"] for r in self.removed],
        })

    # --- helpers --------------------------------------------------------------------------------
    def _phase(self, phase: str, detail: str = "") -> None:
        self.progress.phase = phase
        self.emit("phase", iteration=self.iteration, phase=phase, detail=detail)

    def _has_event(self, type_: str, **fields) -> bool:
        """Whether the log (as it was when this engine started) already holds such an event."""
        if not hasattr(self, "_logged"):
            from engine.runlog.tailer import read_all

            self._logged = read_all(self.rundir.events_file)
        return any(e.get("type") == type_ and all(e.get(k) == v for k, v in fields.items()) for e in self._logged)


def load_layer_tensors(model, path: Path) -> None:
    """Put healed layers (keys ``<original index>.<parameter>``) back into a student."""
    from safetensors.torch import load_file

    mapping = layer_map(model)
    adapter = adapter_for(model)
    with torch.no_grad():
        for key, value in load_file(str(path)).items():
            original, name = key.split(".", 1)
            layer = adapter.layers[mapping.index(int(original))]
            dict(layer.named_parameters())[name].copy_(value)


def _keyed(scores: dict[int, float] | None) -> dict[str, float]:
    return {str(k): v for k, v in sorted((scores or {}).items())}


def _hint(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError if hasattr(torch.cuda, "OutOfMemoryError") else MemoryError):
        return "out of GPU memory: lower --batch-tokens"
    if isinstance(exc, MemoryError):
        return "out of memory: lower --batch-tokens"
    return "the run can be resumed from its last checkpoint with `ild resume RUN`"
