"""The setup of a run, apart from its loop: every part the runner uses, built from the config.

As a recipe's ``setup(cfg)`` before its ``train()``: ``load`` gives the student (and, once more,
the teacher), ``prepare`` the rest in the order the run's events announce them: the evaluation
of the suite, the teacher where the metric or healing needs it, the calibration text where the
metric or a bridge needs it, the healing (data plan, teacher cache, healer) and the scorer. What a
metric needs is what it declares in the registry (``engine.runlog.strategies.METRICS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.evaluation import Evaluation
from engine.healing import Healing
from engine.importance.racing import RacingSettings
from engine.models.loading import load_model
from engine.runlog.strategies import get_metric
from engine.scoring import Scorer


@dataclass
class Parts:
    evaluation: Evaluation
    teacher: object | None  # the frozen original model, where the metric or healing compares against it
    calibration: list  # ScoredSequence of calibration text (empty where nothing needs it)
    healing: Healing | None
    scorer: Scorer


def load(config, ranks):
    """The model on this rank's device (rank 0 first: downloads and GGUF caches happen once)."""
    from engine.distributed.ranks import resolve_device

    gpus = config.distributed.gpus_per_process
    with ranks.main_first():
        return load_model(config.model, device=resolve_device(config.device, ranks, gpus), gpus=gpus)


def heals(run) -> bool:
    """Whether the run distils at all: after removals (the strategy) or once at the end."""
    return run.strategy.heal or run.config.heal.final_tokens > 0


def prepare(run) -> Parts:
    """Every part but the student, for ``run`` (a Runner whose student is loaded and restored)."""
    config = run.config
    metric = get_metric(run.metric)
    run.phase("preparing", f"tokenising suite '{config.suite}'")
    evaluation = _evaluation(run)
    teacher = load(config, run.ranks).model if metric.teacher or heals(run) else None
    cal = calibration(config, run.tokenizer) if metric.calibration or run.strategy.bridge else []
    healing = _healing(run, teacher) if heals(run) else None
    scorer = Scorer(
        run.metric,
        run.model,
        evaluation.select if metric.suite else None,
        cal,
        evaluation.pad_id,
        config.batch_tokens,
        teacher=teacher if metric.teacher else None,
        racing=RacingSettings(enabled=config.scoring.racing, seed=config.seed),
        block=config.start_layers - config.target_layers,
        progress=run.progress,
        cache=_ranking_cache(run),
    )
    return Parts(evaluation, teacher, cal, healing, scorer)


def _ranking_cache(run):
    """Rankings kept across runs, under the score cache's switch (ranks would each ask it: none)."""
    if not run.config.score_cache or run.ranks.distributed:
        return None
    from engine.digests import store_root
    from engine.ranking_cache import RankingCache

    return RankingCache(store_root() / "rankings")


def _evaluation(run) -> Evaluation:
    config = run.config
    scores = None
    if config.score_cache and not run.ranks.distributed:  # ranks would each ask it: no
        from engine.digests import store_root
        from engine.score_cache import ScoreCache

        scores = ScoreCache(store_root() / "scores")
    evaluation = Evaluation(
        run.model,
        run.tokenizer,
        config.suite,
        config.report_suite,
        config.batch_tokens,
        config.split_seed,
        scores,
        eval_cache_mb=config.eval_cache_mb,
    )
    pack = config.scoring.pack_tasks
    evaluation.select.pack_tasks = pack if pack is not None else next(run.model.parameters()).device.type == "cuda"
    if run.ranks.distributed:
        from engine.distributed.evaluator import share_evaluation

        share_evaluation(evaluation, run.ranks, run.control.lockstep_point)
    return evaluation


def calibration(config, tokenizer) -> list:
    """Text for similarity, loss drop and bridges: never the evaluation items."""
    from engine.tasks.requests import ScoredSequence
    from engine.tasks.sources import read_rows
    from engine.tasks.spec import EmbeddedSource, FileSource, TaskSpec

    cal = config.calibration
    path = Path(cal.path)
    source = (
        FileSource(type="jsonl", path=str(path)) if path.is_file() else EmbeddedSource(type="embedded", path=cal.path)
    )
    spec = TaskSpec(
        name="calibration", kind="language_modeling", source=source, metric="next_token_accuracy", samples=cal.samples
    )
    sequences = []
    for i, row in enumerate(read_rows(spec, limit=cal.samples)):
        ids = tokenizer(row["text"])["input_ids"][: cal.max_tokens]
        if len(ids) >= 2:
            sequences.append(ScoredSequence(ids, list(range(len(ids) - 1)), ids[1:], item=i))
    return sequences


def _healing(run, teacher) -> Healing:
    """The data plan (from the run's healing cursor), the teacher cache and the healer; unties the
    student's head where the settings ask (a tensor group that then differs from the teacher's)."""
    from engine.distill.heal import Healer, TeacherCache
    from engine.distill.plan import HealPlan

    config = run.config
    heal_config = config.heal
    run.phase("preparing", "distillation data")
    healings = 0
    if run.strategy.heal:
        healings = config.start_layers - config.target_layers if run.each_removal() else 1
    try:
        plan = HealPlan.build(heal_config.data, run.tokenizer, config.seed, healings, config.heal.final_tokens)
    except (ValueError, OSError) as exc:
        raise RuntimeError(f"distillation data: {exc}") from exc
    plan.cursor = run.heal_cursor
    for note in plan.notes():
        run.say(note, level="warning")
    window = plan.window(final=healings == 0)
    store = None
    # a sharded teacher has no whole weights to key the store with
    if config.heal.teacher_store_mb and config.distributed.heal != "fsdp":
        from engine.digests import store_root
        from engine.distill.teacher_store import TeacherStore

        store = TeacherStore(store_root() / "teacher", config.heal.teacher_store_mb << 20)
    cache = TeacherCache(
        teacher,
        window.blocks,
        plan.data.heldout,
        run.rundir.cache_dir,
        config.heal.cache_limit_mb << 20,
        heal_config.batch_size,
        store=store,
    )
    if config.heal.untie_head:
        from engine.models.surgery import untie_head

        untie_head(run.model)
        run.modified.add("head")
    if config.heal.train_head == "untied":
        heal_config = _train_head_if_untied(run, heal_config)
    cache.set_train(window.blocks, window.index, window.rows, plan.data.train)
    healer = Healer(run.model, cache, heal_config, ranks=run.ranks, shard=config.distributed.heal == "fsdp")
    return Healing(run, healer, plan, heal_config)


def _train_head_if_untied(run, heal_config):
    """``heal.train_head=untied``: the head trains where the student has its own."""
    from engine.models.adapters import adapter_for
    from engine.models.surgery import head_is_tied

    own = not head_is_tied(run.model)
    trainable = heal_config.trainable.model_copy(update={"train_head": own})
    if not own:
        extra = adapter_for(run.model).embed_tokens.weight.numel()
        run.say(
            "the LM head is tied to the input embedding: healing trains the layers only "
            f"(heal.untie_head=true gives the student its own head to train, {extra / 1e6:.1f} M parameters more)"
        )
    return heal_config.model_copy(update={"trainable": trainable})
