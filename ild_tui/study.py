"""``ild study``: every strategy on one model with the same suite, split, seed and budget, one
after another, then one report: the paper's Table 2 as one command.

A study lives in one directory::

    DIR/study.json    the plan: model, strategies, target, suite, seeds, budget, --set settings
    DIR/study.lock    held (flock) by the process running the study
    DIR/study.log     what a detached study printed
    DIR/runs/<strategy>/   one ordinary run directory per strategy (ild ls / attach / the dashboard)
    DIR/report/       the report of every run (ild report)
    DIR/paired/       the two best strategies at each depth, compared item by item (best-two.csv)

Running the same command again continues: a finished run is skipped, an unfinished one (killed,
stopped, failed, never started) is resumed from its last checkpoint by the engine, so a kill costs
at most the iteration it interrupted. Other arguments on the same directory are refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.runlog.layout import RunDir, is_run_dir
from engine.runlog.lock import EngineLock, LockHeld, is_alive, read_holder
from engine.runlog.strategies import STRATEGIES
from engine.runlog.tailer import EventTailer

from .run_config import run_config

PLAN, LOCK, LOG, RUNS, REPORT = "study.json", "study.lock", "study.log", "runs", "report"
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class StudyError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


@dataclass
class Plan:
    """What every run of the study shares, and the strategies it runs. None: the engine's default."""

    model: str
    strategies: list[str]
    target_layers: int
    suite: str | None = None
    seed: int | None = None
    split_seed: int | None = None
    batch_tokens: int | None = None
    device: str | None = None
    settings: dict = field(default_factory=dict)  # the --set overrides, as the nested mapping they make

    def run_config(self, strategy: str) -> dict:
        return run_config(
            strategy,
            self.model,
            strategy,
            settings=self.settings,
            target_layers=self.target_layers,
            suite=self.suite,
            mode="auto",
            batch_tokens=self.batch_tokens,
            seed=self.seed,
            split_seed=self.split_seed,
            device=self.device,
        )

    def differences(self, other: Plan) -> list[str]:
        """What ``other`` (a new invocation) changes that the study's runs cannot share. An option it
        leaves out (None) keeps the study's. Strategies may come in another order (the runs go in the
        new one) and new ones may join; none may leave, since the report covers every run."""
        mine, theirs = asdict(self), asdict(other)
        diffs = [
            f"{k}: {_show(mine[k])} in the study, {_show(theirs[k])} given"
            for k in mine
            if k != "strategies" and theirs[k] is not None and mine[k] != theirs[k]
        ]
        left_out = [s for s in self.strategies if s not in other.strategies]
        if left_out:
            diffs.append(
                f"strategies: the study also holds {','.join(left_out)}; name every one of its strategies "
                "(in any order; new ones may join)"
            )
        return diffs


def _show(value) -> str:
    if value is None:
        return "the engine's default"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return json.dumps(value) if isinstance(value, dict) else str(value)


def parse_strategies(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise StudyError("--strategies needs at least one strategy, e.g. --strategies shortgpt,iterative-distill")
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise StudyError(f"unknown strategy '{unknown[0]}' (known: {', '.join(STRATEGIES)})")
    twice = sorted({s for s in names if names.count(s) > 1})
    if twice:
        raise StudyError(f"--strategies names {twice[0]} twice")
    return names


def local_or_as_given(spec: str | None, files_only: bool = False) -> str | None:
    """A path that exists here, made absolute (the study, its engines and its report may run from
    elsewhere); anything else (an embedded name, a Hub id) as given. ``files_only`` (suites): only
    a file with a suffix, since an embedded suite's bare name wins over a file of that name."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    local = path.is_file() and bool(path.suffix) if files_only else path.exists()
    return str(path.resolve()) if local else spec


# -- the directory ----------------------------------------------------------------------------------


def read_plan(out: Path) -> Plan | None:
    path = out / PLAN
    if not path.is_file():
        return None
    try:
        return Plan(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StudyError(f"{path} is not a study plan ({exc})") from None


def _write_plan(out: Path, plan: Plan) -> None:
    tmp = out / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(asdict(plan), indent=1) + "\n")
    os.replace(tmp, out / PLAN)


def run_dir(out: Path, strategy: str) -> Path:
    return out / RUNS / strategy


def prepare(out: Path, plan: Plan) -> bool:
    """Check ``plan`` against the study already in ``out``, or start a new one there: the plan is
    written and the first strategy's run created, which validates the model, suite and settings in
    the engine (bad input leaves nothing behind). True when the study is new."""
    from .launch import LaunchError, create_run

    stored = read_plan(out)
    if stored is not None:
        diffs = stored.differences(plan)
        if diffs:
            raise StudyError(
                f"{out} holds a study with other settings ({'; '.join(diffs)}): "
                "rerun it with the same arguments, or pick another --out"
            )
        if stored.strategies != plan.strategies:
            holder = StudyLock(out).holder()
            if holder is not None:  # it runs the old plan: change nothing under it
                raise StudyError(f"a study is already running in {out} (pid {holder})", EXIT_FAILED)
            _write_plan(out, replace(stored, strategies=plan.strategies))
        return False
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"--out {out} is not empty and holds no study; pick another directory")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _write_plan(out, plan)
    first = run_dir(out, plan.strategies[0])
    try:
        create_run(first, plan.run_config(plan.strategies[0]))
    except LaunchError as exc:
        (out / PLAN).unlink(missing_ok=True)
        for empty in (out / RUNS, out) if made else (out / RUNS,):
            try:
                empty.rmdir()
            except OSError:
                pass
        raise StudyError(str(exc), exc.code) from None
    return True


class StudyLock:
    """One process runs a study at a time: the engine's lock (``engine.runlog.lock``) on ``study.lock``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lock = EngineLock(out, out / LOCK)

    def holder(self) -> str | None:
        """The pid holding the lock, or None when it is free."""
        if not is_alive(self.out, self.lock.lock_file):
            return None
        return str((read_holder(self.out, self.lock.lock_file) or {}).get("pid", "?"))

    def __enter__(self) -> StudyLock:
        try:
            self.lock.acquire()
        except LockHeld as exc:
            pid = (exc.holder or {}).get("pid", "?")
            raise StudyError(f"a study is already running in {self.out} (pid {pid})", EXIT_FAILED) from None
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


# -- running ---------------------------------------------------------------------------------------


@dataclass
class StudyOutcome:
    unfinished: list[tuple[str, str]]  # (strategy, why)
    report: Path | None
    report_problem: str | None = None


class Interrupted(Exception):
    pass


def run_study(out: Path, view, measure: bool = True) -> StudyOutcome:
    """Run (or continue) every strategy of the study in ``out`` in turn, then write the report."""
    from .launch import LaunchError, create_run, run_foreground
    from .report import ReportError, write_report
    from .runs import summarise

    plan = read_plan(out)
    if plan is None:
        raise StudyError(f"{out} holds no study ({PLAN} is missing)")
    unfinished: list[tuple[str, str]] = []
    with StudyLock(out):
        n = len(plan.strategies)
        for i, strategy in enumerate(plan.strategies, 1):
            path = run_dir(out, strategy)
            head = f"[{i}/{n}] {strategy}"
            if not is_run_dir(path):
                try:
                    create_run(path, plan.run_config(strategy))
                except LaunchError as exc:
                    view.line(f"{head}: cannot start: {exc}")
                    unfinished.append((strategy, str(exc)))
                    continue
            row, state = summarise(RunDir(path))
            if state.strategy not in (None, strategy):
                unfinished.append((strategy, f"{path} is a run of {state.strategy}"))
                view.line(f"{head}: {path} is a run of {state.strategy}, not {strategy}; left alone")
                continue
            if row.status == "finished":
                view.line(f"{head}: finished already, skipped")
                continue
            if is_alive(path):
                view.line(f"{head}: another process runs it; following it until it ends")
                _follow(path, view)
                row, _ = summarise(RunDir(path))
                if row.status == "finished":
                    continue
            view.line(f"{head}: {'resuming' if state.events_seen else 'starting'} {path}")
            outcome = run_foreground(path, view.handle)
            if outcome.code == EXIT_INTERRUPTED or outcome.signal:
                # Ctrl-C, or a SIGTERM the engine stopped for: the study stops too, not the next run.
                raise Interrupted()
            row, _ = summarise(RunDir(path))
            if row.status != "finished":
                why = outcome.message or row.note or f"engine exited with code {outcome.code}"
                view.line(f"{head}: not finished ({row.status}): {why}")
                unfinished.append((strategy, why))
        paths = [run_dir(out, s) for s in plan.strategies if is_run_dir(run_dir(out, s))]
        if not paths:
            return StudyOutcome(unfinished, None, "no run to report on")
        view.line(f"writing the report of {len(paths)} runs to {out / REPORT}")
        try:
            result = write_report(
                paths,
                out / REPORT,
                measure=measure,
                device=plan.device,
                progress=view.line,
                more_sections=lambda report: _pair_best_two(out, report, plan, paths, view),
            )
        except ReportError as exc:
            return StudyOutcome(unfinished, None, str(exc))
        for note in result.notes:
            view.line(f"note: {note}")
        return StudyOutcome(unfinished, result.page)


def _pair_best_two(out: Path, report: Path, plan: Plan, paths: list[Path], view) -> list[str]:
    """The two best strategies at each depth, paired (``ild_tui.study_paired``); a note when not.
    Called by ``write_report`` once ``report``'s tables (summary.csv) and page are written; returns the
    page's section of them."""
    from .study_paired import PAIRED, line, pair_best_two, section

    run_dirs = {s: run_dir(out, s) for s in plan.strategies if run_dir(out, s) in paths}
    paired = pair_best_two(out, report / "summary.csv", run_dirs, device=plan.device, progress=view.line)
    for row in paired.rows:
        view.line(line(row))
    for note in paired.notes:
        view.line(f"note: {note}")
    if paired.rows:
        view.line(f"paired, the two best at each depth: {out / PAIRED}")
    return [section(paired, f"../{PAIRED}")]


def _follow(path: Path, view, poll: float = 0.5) -> None:
    tailer = EventTailer(RunDir(path).events_file)
    tailer.poll()  # what it did before is in its log; show what it does from now on
    while is_alive(path):
        for event in tailer.poll():
            view.handle(event)
        time.sleep(poll)
    for event in tailer.poll():
        view.handle(event)


def start_detached(out: Path, measure: bool = True) -> int:
    """Run the study in a process of its own session (closing the terminal leaves it going)."""
    from .launch import spawn_detached

    holder = StudyLock(out).holder()
    if holder is not None:
        raise StudyError(f"a study is already running in {out} (pid {holder})", EXIT_FAILED)
    command = [sys.executable, "-m", "ild_tui.study", str(out), *([] if measure else ["--no-measure"])]
    with open(out / LOG, "ab") as log:  # the detached study keeps writing to it after we return
        return spawn_detached(command, log).pid


def finish(out: Path, view, measure: bool) -> int:
    """Run the study and say how it ended; the exit code."""
    try:
        outcome = run_study(out, view, measure)
    except (Interrupted, KeyboardInterrupt):
        view.line(f"interrupted; continue with the same `ild study` command (or: python -m ild_tui.study {out})")
        return EXIT_INTERRUPTED
    except StudyError as exc:
        print(f"ild: {exc}", file=sys.stderr)
        return exc.code
    if outcome.report is not None:
        view.line(f"report: {outcome.report}")
    else:
        view.line(f"no report: {outcome.report_problem}")
    if outcome.unfinished:
        view.line(
            "not finished: "
            + "; ".join(f"{s} ({why})" for s, why in outcome.unfinished)
            + " - run the same command again to continue"
        )
        return EXIT_FAILED
    return 0 if outcome.report is not None else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """``python -m ild_tui.study DIR``: run the study planned in DIR (what ``ild study --detach`` starts)."""
    parser = argparse.ArgumentParser(prog="python -m ild_tui.study", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-measure", action="store_true")
    args = parser.parse_args(argv)
    from .headless import HeadlessView

    with HeadlessView() as view:
        return finish(args.out, view, not args.no_measure)


if __name__ == "__main__":
    sys.exit(main())
