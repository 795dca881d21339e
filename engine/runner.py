"""The method as a recipe: score -> propose -> decide -> remove -> heal -> evaluate -> checkpoint.

``Runner._run`` is the loop; each step is one method below, in the order the method runs them.
The parts they use are built by ``engine.setup`` from the config (the student, the teacher, the
evaluation, the scorer, the healing, the calibration text) and live in their own modules
(``scoring``, ``evaluation``, ``healing``, ``checkpoints``, ``control``).
Everything the run learns goes out as events through the controller (layers always named by
their original teacher index); ``checkpoints/<k>/`` lets a new engine continue where a dead one
stopped, and a run with nothing left to do ends with its export.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from pathlib import Path

import torch

from engine import faults, setup
from engine.checkpoints import Checkpoint, CheckpointStore, layer_group, manifest_digest
from engine.config import RunConfig
from engine.control import Decision, StopRequested
from engine.distributed.control import RankedController
from engine.distributed.ranks import SINGLE, Ranks
from engine.evaluation import summary
from engine.failures import DISK_FULL_HINT, disk_full
from engine.failures import describe as describe_failure
from engine.models.adapters import adapter_for
from engine.models.export import export_model
from engine.models.loading import model_version
from engine.models.surgery import layer_map, parameter_count, remove_layers
from engine.progress import Progress
from engine.runlog.layout import RunDir
from engine.runlog.state import write_state
from engine.runlog.strategies import get_strategy
from engine.runlog.tailer import read_all
from engine.scoring import Ranking, reuse

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, run_dir: str | Path, config: RunConfig, ranks: Ranks = SINGLE, prepare=setup.prepare):
        self.ranks = ranks  # the engine processes of this run; rank 0 alone writes the run directory
        self.prepare = prepare  # builds the parts from the config (engine.setup.prepare; tests wrap it)
        self.rundir = RunDir(run_dir)
        self.config = config
        self.strategy = get_strategy(config.strategy)
        self.metric = config.importance_metric()
        self.store = CheckpointStore(self.rundir)
        self.iteration = 0
        self.removed: list[dict] = []  # {"iteration", "layer", "by", "proposed"} in removal order
        self.modified: set[str] = set()  # tensor groups that differ from the teacher's (see checkpoints)
        self.one_shot: dict[int, float] | None = None  # a one-shot strategy's scores of the teacher
        self.heal_cursor = 0  # blocks of the healing data taken so far (see engine.distill.plan)
        self.final_healed = False  # the final healing is done (heal.final_tokens)
        self.model = None
        self.teacher_report: float | None = None

    # --- events ---------------------------------------------------------------------------------
    def emit(self, type_: str, **fields):
        return self.control.emit(type_, **fields)

    def say(self, message: str, level: str = "info") -> None:
        log.info(message)
        self.emit("log", level=level, message=message, iteration=self.iteration)

    # --- the run --------------------------------------------------------------------------------
    def run(self) -> str:
        """Run to the end; returns the reason the run finished."""
        config = self.config
        self.control = RankedController(
            self.ranks,
            self.rundir,
            config.mode,
            config.auto_after_seconds,
            notify_cmd=config.notify_cmd,
            stall_seconds=config.stall_seconds,
        )
        with self.control:
            try:
                return self._run()
            except StopRequested:
                self._finish("stopped", f"stopped at iteration {self.iteration}; continue with ild resume")
                return "stopped"
            except Exception as exc:
                error = describe_failure(exc)
                self.emit("run_failed", error=error, hint=_hint(exc), iteration=self.iteration)
                self.control.notify("failed", error)
                raise

    def _run(self) -> str:
        self.start()
        self.evaluate_teacher()
        while self.depth > self.config.target_layers:
            self.iteration += 1
            self.progress.iteration = self.iteration
            partial = self.store.partial(self.iteration)  # a healing a killed engine left half done
            if partial is not None:
                self.redo_removal(partial)
            else:
                ranking = self.score()
                decision = self.decide(ranking)
                self.remove(decision.layer, decision.by, ranking.proposal)
                if self.whole_step():
                    self.evaluate(
                        "after_removal",
                        free_select=ranking.per_task.get(decision.layer),
                        known_select=ranking.partial_items.get(decision.layer),
                    )
            if self.heals_now():
                self.healing.after_removal(self._gaps_this_heal(), partial)
                self.evaluate("after_healing", heldout=self.healing.heldout, healing=self.healing.summary)
            if self.below_floor():
                return self.stop_at_floor()
            self.checkpoint()
        if self.final_heal_due():
            self.final_heal()
        self.export()
        self._finish(
            "target",
            f"finished: {self.depth} layers, removed {self.removed_layers}",
            export=str(self.rundir.export_dir),
        )
        return "target"

    # --- start: load, restore, prepare ----------------------------------------------------------
    def start(self) -> None:
        config = self.config
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.progress = Progress(self.control)
        self._logged = read_all(self.rundir.events_file)
        if self.ranks.is_main:
            for name in self.store.clean_leftovers():
                log.info("removed %s, left half-written by an engine that was killed", name)
        self.ranks.barrier()  # every rank has read the log and sees the cleaned checkpoints
        checkpoint = self.store.latest(self._logged)
        self.emit(
            "engine_started",
            pid=os.getpid(),
            host=socket.gethostname(),
            resumed_from=checkpoint.name if checkpoint else None,
            threads=torch.get_num_threads(),
            **({"processes": self.ranks.size} if self.ranks.distributed else {}),
        )
        if checkpoint is not None and checkpoint.note:
            self.say(checkpoint.note, level="warning")
        self.control.lockstep_point()

        self.phase("loading", config.model)
        loaded = setup.load(config, self.ranks)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        # the teacher's size, before a strategy unties the student's head (+ vocabulary x hidden)
        self.teacher_params = parameter_count(self.model)
        if checkpoint is None and not self._logged_event("run_started"):
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
                mode_seconds=config.auto_after_seconds,
                params=self.teacher_params,
                config=config.model_dump(),
            )
        if checkpoint is not None:
            self.restore(checkpoint)

        parts = self.prepare(self)
        self.evaluation, self.teacher, self.calibration = parts.evaluation, parts.teacher, parts.calibration
        self.healing, self.scorer = parts.healing, parts.scorer

    def restore(self, checkpoint: Checkpoint) -> None:
        self.store.restore(self.model, checkpoint)
        self.iteration = checkpoint.iteration
        self.removed = list(checkpoint.removed)
        self.modified = set(checkpoint.modified)
        scores = checkpoint.extra.get("one_shot")
        self.one_shot = {int(k): v for k, v in scores.items()} if scores else None
        self.final_healed = bool(checkpoint.extra.get("final_healed"))
        if "heal_cursor" in checkpoint.extra:
            self.heal_cursor = int(checkpoint.extra["heal_cursor"])
        elif self.strategy.heal and self.each_removal():  # a checkpoint from before windows
            self.heal_cursor = self.iteration * max(1, self.config.heal.train_tokens // self.config.heal.seq_len)
        self.say(
            f"resumed from checkpoint {checkpoint.name} (iteration {self.iteration}, removed {self.removed_layers})"
        )

    # --- 5. evaluate (the teacher first) --------------------------------------------------------
    def evaluate_teacher(self) -> None:
        logged = self._logged_event("eval", iteration=0, stage="teacher", part="report")
        if logged is not None:
            self.teacher_report = logged.get("aggregate")
        if self.iteration == 0 and logged is None:
            self.evaluate("teacher")
            self.checkpoint()

    def evaluate(
        self, stage: str, free_select: dict[str, float] | None = None, known_select: dict | None = None, **extra
    ) -> None:
        """Both parts of the model as it is now; the selection part may be known already (task drop
        scored exactly this model: the shared prefix is exact), or known on some of its items
        (``known_select``: racing dropped the removed layer early), the rest then scored."""
        self.phase("evaluating", stage.replace("_", " "))
        self.evaluation.cached.clear()
        if free_select is not None:
            select = free_select
        elif known_select:
            select = self.evaluation.completed(known_select, self.progress)
        else:
            select = self.evaluation.scores("select", self.progress)
        report = self.evaluation.scores("report", self.progress)
        cached = [p for p in ("select", "report") if self.evaluation.cached.get(p)]
        if cached:
            self.say(
                f"{stage.replace('_', ' ')}: {' and '.join(cached)} scores from the score cache (same weights and items)"
            )
        common = {
            "iteration": self.iteration,
            "stage": stage,
            "layers": self.depth,
            "params": self.teacher_params if stage == "teacher" else parameter_count(self.model),
        }
        self.emit("eval", part="select", aggregate=summary(select), tasks=select, **common)
        self.emit("eval", part="report", aggregate=summary(report), tasks=report, **common, **extra)
        if stage == "teacher":
            self.teacher_report = summary(report)
        self.last_report = summary(report)

    # --- 1. score, 2. propose -------------------------------------------------------------------
    def score(self) -> Ranking:
        if self.config.removals is not None:
            layer = self.config.removals[self.iteration - 1]
            return Ranking([(layer, 0.0)], {}, {})
        if not self.strategy.rescore and self.one_shot is not None:
            ranking = reuse(self.one_shot, layer_map(self.model), self.metric)
        else:
            self.phase("scoring", self.metric)
            ranking = self.scorer.score()
            if self.scorer.cached:
                self.say(f"scoring: the {self.metric} ranking from the score cache (same weights, items and settings)")
            if not self.strategy.rescore:
                self.one_shot = {int(k): v for k, v in ranking.event["scores"].items()}
        self.emit("importance", iteration=self.iteration, **ranking.event)
        candidates = [
            {
                "layer": layer,
                "score": score,
                **({"tasks": ranking.per_task[layer]} if layer in ranking.per_task else {}),
            }
            for layer, score in ranking.ranked
        ]
        self.emit(
            "proposal", iteration=self.iteration, layer=ranking.proposal, metric=self.metric, candidates=candidates
        )
        return ranking

    # --- 3. decide ------------------------------------------------------------------------------
    def decide(self, ranking: Ranking) -> Decision:
        """Fixed removals need nobody; auto takes the proposal; manual waits for a person; auto-after
        waits, then takes it."""
        if self.config.removals is not None:
            decision = Decision(ranking.proposal, "fixed")
        else:
            decision = self.control.decide(
                self.iteration,
                ranking.proposal,
                layer_map(self.model),
                [{"layer": layer, "score": score} for layer, score in ranking.ranked],
            )
        self.emit(
            "decision",
            iteration=self.iteration,
            layer=decision.layer,
            by=decision.by,
            proposed=ranking.proposal,
            command_id=decision.command_id,
        )
        return decision

    # --- 4. remove ------------------------------------------------------------------------------
    def remove(self, layer: int, by: str, proposed: int, announce: bool = True) -> None:
        bridge = None  # what the linear map that replaced the layer did, where the strategy bridges
        if self.strategy.bridge:
            bridge = self._remove_with_bridge(layer)
        else:
            remove_layers(self.model, layer)
        self.removed.append({"iteration": self.iteration, "layer": layer, "by": by, "proposed": proposed})
        if not announce:
            return
        mapping = layer_map(self.model)
        self.emit(
            "layer_removed",
            iteration=self.iteration,
            layer=layer,
            remaining=mapping,
            layers=len(mapping),
            params=parameter_count(self.model),
            **({"bridge": bridge} if bridge else {}),
        )

    def redo_removal(self, partial) -> None:
        """Iteration k's removal again, as it was decided before the engine died (bridges are
        deterministic: the same data gives the same map); its events are in the log already."""
        layer, by = int(partial.decision["layer"]), partial.decision["by"]
        self.remove(layer, by, partial.decision.get("proposed", layer), announce=False)
        self.say(f"resuming iteration {self.iteration} at healing step {partial.step} (layer {layer} already removed)")

    def _remove_with_bridge(self, layer: int) -> dict | None:
        """Remove ``layer``, replaced by a least-squares map fused into the layer before it; plain
        removal where no bridge fits (the first remaining layer, a post-MLP norm)."""
        from engine.models.bridge import check_bridgeable, remove_with_bridge
        from engine.models.errors import SurgeryError

        try:
            check_bridgeable(self.model, [layer])
        except SurgeryError as exc:
            remove_layers(self.model, layer)
            self.say(f"layer {layer} removed without a bridge: {exc}")
            return None
        fit = remove_with_bridge(
            self.model, [layer], self.calibration, self.evaluation.pad_id, self.config.batch_tokens
        )
        self.modified.add(layer_group(fit.into))
        self.say(
            f"layer {layer} replaced by a linear map fused into layer {fit.into}: relative residual "
            f"{fit.relative_residual:.3f} (plain removal {fit.plain_relative_residual:.3f})"
        )
        return fit.summary()

    def whole_step(self) -> bool:
        """Whether this removal is healed (where the run heals) and evaluated: every one, but the
        removals before the last of a fixed-removal run that heals once (it compares the student
        before and after that one healing)."""
        return self.each_removal() or self.depth == self.config.target_layers

    def each_removal(self) -> bool:
        """Whether every removal is healed and evaluated: always but in a fixed-removal run or a
        prune-then-heal strategy (``heal_once``), which heal once (heal.each_removal: each too)."""
        once = self.config.removals is not None or self.strategy.heal_once
        return not once or self.config.heal.each_removal

    # --- healing (engine.healing) ---------------------------------------------------------------
    def heals_now(self) -> bool:
        return self.healing is not None and self.strategy.heal and self.whole_step()

    def final_heal_due(self) -> bool:
        return self.healing is not None and self.config.heal.final_tokens > 0 and not self.final_healed

    def final_heal(self) -> None:
        """After the last removal, one longer healing (heal.final_tokens); evaluated as the stage
        after_final_healing, then checkpointed again."""
        self.healing.final()
        self.evaluate("after_final_healing", heldout=self.healing.heldout, healing=self.healing.summary)
        self.final_healed = True
        self.checkpoint()

    def _gaps_this_heal(self) -> list[int]:
        """The layers whose removal this healing repairs: this iteration's, or in a run that heals
        once (fixed removals, a prune-then-heal strategy) all of them."""
        if not self.each_removal():
            return [r["layer"] for r in self.removed]
        return [self.removed[-1]["layer"]]

    # --- the quality floor ----------------------------------------------------------------------
    def below_floor(self) -> bool:
        floor = self.config.min_retention
        if floor is None or self.teacher_report is None or not self.whole_step():
            return False
        return self.last_report < floor * self.teacher_report

    def stop_at_floor(self) -> str:
        """The student of this iteration fell below the floor: the last checkpoint is the answer."""
        layer = self.removed[-1]["layer"]
        rejected = {"iteration": self.iteration, "layer": layer, "aggregate": self.last_report}
        self.say(
            f"removing layer {layer} left the report aggregate at {self.last_report:.4f}, below "
            f"{self.config.min_retention:.0%} of the teacher's {self.teacher_report:.4f}: keeping the student of "
            f"iteration {self.iteration - 1}"
        )
        checkpoint = self.store.latest()
        self.model = setup.load(self.config, self.ranks).model
        self.removed, self.iteration = list(checkpoint.removed), checkpoint.iteration
        self.store.restore(self.model, checkpoint)
        self.export()
        self._finish(
            "floor",
            f"stopped at the quality floor with {self.depth} layers",
            export=str(self.rundir.export_dir),
            rejected=rejected,
        )
        return "floor"

    # --- 6. checkpoint, export, finish ----------------------------------------------------------
    def checkpoint(self) -> None:
        faults.point("checkpoint")
        extra = {"one_shot": {str(k): v for k, v in self.one_shot.items()}} if self.one_shot else {}
        extra.update(heal_cursor=self.heal_cursor, final_healed=self.final_healed)
        if self.ranks.is_main:
            path = self.store.save(self.iteration, self.removed, self.model, sorted(self.modified), extra)
            self.emit(
                "checkpoint",
                iteration=self.iteration,
                name=str(self.iteration),
                path=str(path),
                removed=self.removed_layers,
                manifest_sha256=manifest_digest(path),
            )
            self._write_state()

    def export(self) -> None:
        self.phase("exporting", str(self.rundir.export_dir))
        faults.point("export")
        if not self.ranks.is_main:
            return
        export_model(
            self.model,
            self.tokenizer,
            self.rundir.export_dir,
            {
                "teacher": self.config.model,
                "strategy": self.config.strategy,
                "run": self.config.name,
                "removal_order": self.removed_layers,
            },
            run_dir=self.rundir.path,
        )

    def _finish(self, reason: str, message: str, **extra) -> None:
        fields = {"reason": reason, "iteration": self.iteration, "removed": self.removed_layers}
        if self.model is not None:
            fields.update(layers=self.depth, params=parameter_count(self.model))
        self.emit("run_finished", **fields, **extra)
        if self.model is not None:
            self._write_state(finished=reason != "stopped")
        self.control.notify("stopped" if reason == "stopped" else "finished", message)

    def _write_state(self, finished: bool = False) -> None:
        if not self.ranks.is_main:
            return
        write_state(
            self.rundir,
            {
                "iteration": self.iteration,
                "removed": self.removed_layers,
                "mapping": layer_map(self.model),
                "last_checkpoint": str(self.iteration),
                "mode": self.control.mode,
                "finished": finished,
            },
        )

    # --- helpers --------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return adapter_for(self.model).num_layers

    @property
    def removed_layers(self) -> list[int]:
        return [r["layer"] for r in self.removed]

    def phase(self, phase: str, detail: str = "") -> None:
        self.progress.phase = phase
        self.emit("phase", iteration=self.iteration, phase=phase, detail=detail)

    def _logged_event(self, type_: str, **fields) -> dict | None:
        """The last such event in the log as it was when this engine started."""
        for e in reversed(self._logged):
            if e.get("type") == type_ and all(e.get(k) == v for k, v in fields.items()):
                return e
        return None


def _hint(exc: BaseException) -> str:
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", MemoryError)):
        return "out of GPU memory: lower --batch-tokens"
    if isinstance(exc, MemoryError):
        return "out of memory: lower --batch-tokens"
    if disk_full(exc):
        return DISK_FULL_HINT
    return "the run can be resumed from its last checkpoint with `ild resume RUN`"
