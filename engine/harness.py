"""``ild eval``: lm-evaluation-harness on exported students and their teachers, with the same settings.

``python -m engine.harness`` reads a JSON plan on stdin: ``{"targets": [{"label", "model", "run",
"role"}], "tasks": [...], "include": DIR|null, "num_fewshot", "limit", "batch_size", "device"}``.
Every model is loaded by ild's own loader (Hub id, local directory, GGUF, the embedded default) and
handed to lm-eval's HF backend (``HFLM(pretrained=model)``), so a teacher and its students are
scored by the same code with the same settings. The side-by-side table goes to stdout; each run's
teacher and student results go to ``RUN/lm_eval.json`` (written atomically), where ``ild report``
finds them. lm-evaluation-harness is an optional extra (``pip install 'ild[lm-eval]'``).
"""

from __future__ import annotations

import json
import logging
import sys
import time

RESULTS_FILE = "lm_eval.json"
EXIT_FAILED, EXIT_USAGE = 1, 2


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"ild: {message}", file=sys.stderr)
    return code


def task_manager(include: str | None, tasks: list[str]):
    """lm-eval's task index: only the given folder when it holds every task (indexing lm-eval's
    thousands of built-in YAMLs costs seconds), else the built-in tasks too."""
    from lm_eval.tasks import TaskManager

    if include:
        only = TaskManager(include_path=include, include_defaults=False)
        if all(t in only.all_tasks for t in tasks):
            return only
    return TaskManager(include_path=include)


def evaluate(model_spec: str, tasks: list[str], settings: dict, manager) -> dict:
    """lm-eval's results of one model: ``{task: {metric: value}}`` plus versions and shots."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from engine.models.loading import load_model

    loaded = load_model(model_spec, device=settings.get("device") or "cpu")
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=settings.get("batch_size") or 8)
    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=settings.get("num_fewshot"),
        limit=settings.get("limit"),
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    results = {
        task: {k: v for k, v in values.items() if k not in ("alias", "name", "sample_len") and not k.startswith("_")}
        for task, values in out["results"].items()
    }
    return {
        "model": model_spec,
        "results": results,
        "versions": out.get("versions", {}),
        "n-shot": out.get("n-shot", {}),
        "n-samples": out.get("n-samples", {}),
        "lm_eval_version": out.get("lm_eval_version"),
    }


def metric_rows(evaluated: list[tuple[str, dict]]) -> list[tuple[str, str, list]]:
    """(task, metric, [value per model]) for every metric any model has (stderr columns left out)."""
    keys: dict[tuple[str, str], None] = {}
    for _, result in evaluated:
        for task, metrics in result["results"].items():
            for metric, value in metrics.items():
                if "stderr" not in metric and isinstance(value, (int, float)):
                    keys[(task, metric)] = None
    return [(t, m, [r["results"].get(t, {}).get(m) for _, r in evaluated]) for t, m in keys]


def table(evaluated: list[tuple[str, dict]], teacher: str | None = None) -> str:
    """The side-by-side table: one column per model; with a teacher, each student's retention."""
    labels = [label for label, _ in evaluated]
    rows = metric_rows(evaluated)
    tw = max([len("task")] + [len(t) for t, _, _ in rows])
    mw = max([len("metric")] + [len(m.split(",")[0]) for _, m, _ in rows])
    cw = [max(8, len(label)) for label in labels]
    head = f"{'task':<{tw}}  {'metric':<{mw}}  " + "  ".join(f"{lab:>{w}}" for lab, w in zip(labels, cw))
    lines = [head]
    t_index = labels.index(teacher) if teacher in labels else None
    for task, metric, values in rows:
        cells = []
        for k, (value, w) in enumerate(zip(values, cw)):
            text = "-" if value is None else f"{value:.4f}"
            if t_index is not None and k != t_index and value is not None and values[t_index]:
                text += f" ({100 * value / values[t_index]:.0f}%)"
            cells.append(f"{text:>{w}}")
        lines.append(f"{task:<{tw}}  {metric.split(',')[0]:<{mw}}  " + "  ".join(cells))
    return "\n".join(lines)


def run(plan: dict) -> int:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return _fail("lm-evaluation-harness is not installed: pip install 'ild[lm-eval]' (or pip install lm-eval)")
    from engine.models.errors import ModelSpecError, UnsupportedArchitecture
    from engine.runlog.atomic import write_json_atomic
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes about a model passed as an object
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    settings = {k: plan.get(k) for k in ("num_fewshot", "limit", "batch_size", "device")}
    tasks = list(plan["tasks"])
    try:
        manager = task_manager(plan.get("include"), tasks)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            where = f" in {plan['include']}" if plan.get("include") else ""
            return _fail(f"--lm-eval: no lm-eval task '{unknown[0]}'{where}")
        done: dict[str, dict] = {}  # model spec -> results: a teacher shared by runs is evaluated once
        evaluated: list[tuple[str, dict]] = []
        for target in plan["targets"]:
            print(f"evaluating {target['label']} ({target['model']})", file=sys.stderr, flush=True)
            if target["model"] not in done:
                done[target["model"]] = evaluate(target["model"], tasks, settings, manager)
            evaluated.append((target["label"], done[target["model"]]))
    except (ModelSpecError, UnsupportedArchitecture, ValueError, OSError) as exc:
        return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, EXIT_FAILED)
    teachers = [t["label"] for t in plan["targets"] if t.get("role") == "teacher"]
    print(table(evaluated, teachers[0] if len(teachers) == 1 else None))
    by_label = dict(evaluated)
    for target in plan["targets"]:
        if target.get("role") != "student" or not target.get("run"):
            continue
        teacher = next(
            (t for t in plan["targets"] if t.get("role") == "teacher" and target["run"] in t.get("runs", [])), None
        )
        record = {
            "written": time.time(),
            "tasks": tasks,
            "include": plan.get("include"),
            "settings": settings,
            "student": by_label[target["label"]],
            "teacher": by_label[teacher["label"]] if teacher else None,
        }
        write_json_atomic(f"{target['run']}/{RESULTS_FILE}", record)
    return 0


def main() -> int:
    try:
        plan = json.load(sys.stdin)
    except ValueError as exc:
        return _fail(f"engine.harness: bad plan on stdin ({exc})")
    return run(plan)


if __name__ == "__main__":
    sys.exit(main())
