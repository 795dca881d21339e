"""Step 4 of the method, heal: the distillation after a removal, and the final healing.

``Healing`` holds the healer, its data plan and its settings, and heals the student on the plan's
next window of data; it reports through the runner it serves (events, phase, the safe points of
the controller, the checkpoint store for partial healings). ``engine.setup.healing`` builds it.
"""

from __future__ import annotations

from engine import faults
from engine.checkpoints import layer_group
from engine.control import StopRequested
from engine.distill.heal import HealInterrupted, HealState, NonFiniteLoss
from engine.distill.losses import hidden_pairs
from engine.distill.trainable import choose_trainable
from engine.models.surgery import layer_map


class Healing:
    def __init__(self, run, healer, plan, heal_config):
        self.run = run  # the Runner: its model, iteration, events, controller and checkpoint store
        self.healer = healer
        self.plan = plan
        self.config = heal_config  # engine.config.HealSettings
        self.heldout: dict = {}  # the held-out loss before and after the last healing
        self.summary: dict = {}  # the last healing's data window

    def after_removal(self, gaps: list[int], partial) -> None:
        """Heal the layers next to ``gaps`` (this iteration's removal, or all of a fixed-removal run),
        resuming ``partial`` (a partial checkpoint of this iteration's healing) if given."""
        run = self.run
        trainable = choose_trainable(layer_map(run.model), run.config.start_layers, gaps, self.config.trainable)
        last = run.removed[-1]
        chosen = {"layer": last["layer"], "by": last["by"], "proposed": last["proposed"]}
        self._window(trainable, chosen, partial, final=False)

    def final(self) -> None:
        """After the last removal, one longer healing (heal.final_tokens) of every layer next to a
        gap or of all layers."""
        run = self.run
        partial = run.store.partial(run.iteration)
        if partial is not None and partial.extra.get("stage") != "final":
            partial = None  # an iteration's healing state, left by a kill before checkpoint cleanup
        choice = "all" if run.config.heal.final_trainable == "all" else "radius"
        rule = self.config.trainable.model_copy(update={"choice": choice, "k": 1})
        trainable = choose_trainable(layer_map(run.model), run.config.start_layers, [], rule)
        if partial is not None:
            run.say(f"resuming the final healing at step {partial.step}")
        self._window(trainable, {"final": True}, partial, final=True)

    def _window(self, trainable: list[int], chosen: dict, partial, final: bool) -> None:
        """Heal ``trainable`` on the plan's next window of data (resuming ``partial`` if given)."""
        run = self.run
        mapping = layer_map(run.model)
        window = self.plan.window(final=final)
        self.healer.cache.set_train(window.blocks, window.index, window.rows, self.plan.data.train)
        pairs = hidden_pairs(self.config.loss, trainable, len(mapping))
        what = "final healing: " if final else ""
        run.phase("healing", f"{what}layers {[mapping[j] for j in trainable]} (original)")
        run.say(self.plan.describe(window), level="warning" if window.repeats else "info")
        run.progress.mark("held-out loss")
        self.healer.stage = run.progress.mark  # the parts of its preparation, for bench/phases.py
        self.healer.cache.progress = run.progress
        self.healer.cache.say = lambda text: run.say(text, level="warning")
        before = self.healer.heldout_loss(pairs)
        resume = HealState.from_saved(partial.state) if partial is not None else None
        tag = {"stage": "final"} if final else {}

        def save_partial(state: HealState) -> None:
            faults.point("partial_checkpoint")
            if not run.ranks.is_main:
                return
            run.store.save_partial(run.iteration, state.step, chosen, trainable, state.to_saved(), extra=tag)
            run.emit(
                "checkpoint",
                iteration=run.iteration,
                name=f"partial-{run.iteration}-{state.step}",
                partial=True,
                step=state.step,
            )

        def interrupt() -> bool:
            try:
                run.control.lockstep_point()
            except StopRequested:
                return True
            return False

        try:
            summary_ = self.healer.heal(
                trainable,
                run.iteration,
                run.config.seed,
                on_step=lambda r: run.emit("train_step", **r, **tag),
                on_checkpoint=save_partial,
                resume=resume,
                interrupt=interrupt,
                baseline=before["loss"],
                salt=7919 if final else 0,
            )
            note = f"healed {summary_['steps']} steps ({summary_['tokens']} tokens) in {summary_['seconds']:.0f}s"
            if summary_["stopped_early"]:
                note += f", stopped early (no held-out gain in {self.config.patience} checks)"
            if summary_["kept_step"] != summary_["steps"]:
                note += f"; kept the weights of step {summary_['kept_step']}, the best held-out check"
        except HealInterrupted:
            raise StopRequested() from None
        except NonFiniteLoss as exc:
            note = f"healing stopped: {exc}; restored the weights from before this iteration's healing"
            run.emit("alert", level="error", message=note, iteration=run.iteration)
        run.modified.update(layer_group(mapping[j]) for j in trainable)
        if self.config.trainable.train_norm:
            run.modified.add("norm")
        if self.config.trainable.train_head:
            run.modified.add("head")
        after = self.healer.heldout_loss(pairs)
        self.plan.advance(window)
        run.heal_cursor = self.plan.cursor
        run.say(
            f"{what}{note}; held-out distillation loss {before['loss']:.4f} -> {after['loss']:.4f}; "
            f"{window.epochs:.2f} passes over the healing data"
        )
        self.heldout = {"before": before, "after": after}
        self.summary = window.summary(self.plan.seq_len)
