"""The loss as data: a term registered by one module (tests/example_term.py) with its setting is
accepted by the config, enters a healing step's loss and its ``terms``, and shows in the live
panel, the headless view and the report; old runs' fixed loss fields read as the same terms."""

import copy
import csv

import pytest
import torch

from engine.config import ConfigError, HealSettings, validate_config
from engine.distill.terms import TERMS, register, unregister
from engine.runlog.loss_terms import step_terms
from tests import example_term


@pytest.fixture
def cosine():
    register(example_term.TERM)  # what importing the module did; undone after the test
    yield example_term.TERM
    unregister("cosine")


def _config(**heal) -> dict:
    return {
        "name": "t",
        "model": "m",
        "strategy": "iterative-distill",
        "start_layers": 4,
        "target_layers": 3,
        "heal": heal,
    }


def test_the_config_reads_the_registry(cosine):
    config = validate_config(_config(cosine_scale="0.5"))  # as --set heal.cosine_scale=0.5 gives it
    assert config.heal.loss.setting("cosine_scale") == 0.5 and config.heal.cosine_scale == 0.5
    assert config.heal.model_dump()["cosine_scale"] == 0.5  # written back flat, as users set it
    assert HealSettings().loss.setting("cosine_scale") == 0.0  # its default: off
    with pytest.raises(
        ConfigError, match=r"^config heal.loss: cosine_scale: Input should be greater than or equal to 0"
    ):
        validate_config(_config(cosine_scale=-1))
    with pytest.raises(ConfigError, match=r"^config heal.cosine_scal: unknown setting$"):
        validate_config(_config(cosine_scal=1))
    unregister("cosine")
    with pytest.raises(ConfigError, match="unknown setting"):  # without its module, no such setting
        validate_config(_config(cosine_scale=0.5))


def test_flat_names_and_the_nested_form_are_one_setting():
    flat = HealSettings(kl_scale=0.5, trainable="last", trainable_k=3, data="mixed", seq_len=64)
    nested = HealSettings(
        loss={"kl_scale": 0.5}, trainable={"choice": "last", "k": 3}, data={"source": "mixed", "seq_len": 64}
    )
    assert flat == nested and flat.train_tokens == flat.data.train_tokens == 32768
    assert HealSettings.model_validate(flat.model_dump()) == flat
    with pytest.raises(ValueError, match="set twice"):
        HealSettings(kl_scale=0.5, loss={"kl_scale": 0.1})
    with pytest.raises(ConfigError, match=r"^config heal.trainable_k: Input should be greater than or equal to 1"):
        validate_config(_config(trainable_k=0))


def _healing_steps(**heal) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from engine.distill.heal import Healer, TeacherCache
    from engine.models.surgery import remove_layers
    from tests.tiny_models import tiny_config

    config = tiny_config("llama")
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    student = copy.deepcopy(teacher)
    remove_layers(student, 3)
    g = torch.Generator().manual_seed(5)
    train, heldout = torch.randint(3, 256, (8, 16), generator=g), torch.randint(3, 256, (4, 16), generator=g)
    settings = HealSettings(lr=1e-3, batch_size=4, seq_len=16, head_matmul="fp32", early_stop=False, **heal)
    healer = Healer(student, TeacherCache(teacher, train, heldout, None, 1 << 30, 4), settings)
    steps = []
    healer.heal([2, 3], iteration=1, seed=0, on_step=steps.append)
    return steps


def test_a_registered_term_heals_and_shows_everywhere(cosine, tmp_path):
    from engine.runlog.tailer import read_all
    from ild_tui.live.losses import LossPanel, LossSeries
    from ild_tui.report import write_report
    from ild_tui.report.plots import loss_series
    from tests.support import append_events
    from tools.synthetic_runs import synth_run

    steps = _healing_steps(cosine_scale=0.5)
    assert [list(s["terms"]) for s in steps] == [["kl", "mse", "cosine"]] * len(steps)
    for s in steps:
        # the loss is its terms' sum (float32 sums of three terms: a few ulps apart)
        assert sum(s["terms"].values()) == pytest.approx(s["loss"], rel=1e-6)
        assert s["terms"]["cosine"] == pytest.approx(0.5 * s["unweighted"]["cosine"], rel=1e-12)
        assert s["unweighted"]["cosine"] > 0
    # the term is off at its default: not computed, not logged
    assert list(_healing_steps()[0]["terms"]) == ["kl", "mse"]

    run = tmp_path / "runs" / "r"
    synth_run(run, name="r", steps_per_iter=0, end="target")
    append_events(run, *({"type": "train_step", **{k: v for k, v in s.items() if k != "heldout_loss"}} for s in steps))
    events = [e for e in read_all(run / "events.jsonl") if e["type"] == "train_step"]
    assert events and all(e["terms"]["cosine"] > 0 for e in events)  # the writer's schema took it

    series = LossSeries()  # the live panel
    for e in events:
        series.add(e)
    assert series.shown() == ("loss", "kl_term", "mse_term", "cosine_term")
    status = LossPanel._status(events[-1]).plain
    assert "% cosine)" in status and "cosine " in status

    result = write_report([run], tmp_path / "report", measure=False)  # the report
    with open(result.out / "train_steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"cosine", "cosine_term"} <= set(rows[0]) and float(rows[-1]["cosine_term"]) > 0
    labels = [label for label, pts in loss_series(events) if pts]
    assert labels == ["total loss", "kl term", "mse term", "cosine term"]


def test_the_headless_view_names_every_term(cosine):
    from io import StringIO

    from rich.console import Console

    from ild_tui.headless import HeadlessView

    out = StringIO()
    view = HeadlessView(Console(file=out, width=200))  # piped: a line at the first step
    terms = {"kl": 1.0, "mse": 0.5, "cosine": 0.5}
    view.handle(
        {"seq": 0, "t": 1.0, "type": "train_step", "iteration": 1, "step": 1, "steps": 4, "loss": 2.0, "terms": terms}
    )
    assert "(kl term 1.0000, mse term 0.5000, cosine term 0.5000)" in out.getvalue()


def test_old_runs_fixed_fields_read_as_terms():
    assert step_terms({"loss": 1.5, "kl": 20.0, "mse": 0.5, "kl_term": 1.0, "mse_term": 0.5}) == (
        {"kl": 1.0, "mse": 0.5},
        {"kl": 20.0, "mse": 0.5},
    )
    assert step_terms({"kl": 20.0, "mse": 0.5}) == ({}, {"kl": 20.0, "mse": 0.5})  # the oldest: unweighted only
    new = {"terms": {"kl": 1.0, "x": None}, "unweighted": {"kl": 2.0}, "kl_term": 9.0}
    assert step_terms(new) == ({"kl": 1.0, "x": None}, {"kl": 2.0})  # the map wins over a stray old field
    assert step_terms({"terms": {"kl": "high", "mse": float("nan")}}) == ({"kl": None, "mse": None}, {})


def test_term_names_leave_room_for_the_readers_columns():
    for bad in ("loss", "kl_term", "two words"):
        with pytest.raises(ValueError, match="loss term name"):
            register(example_term.LossTerm(bad, example_term.cosine_distance, lambda s: 1.0))
    assert "loss" not in TERMS


def test_the_events_doc_needs_no_edit_for_a_new_term(cosine):
    from pathlib import Path

    from engine.runlog.schema import markdown

    assert markdown() == (Path(__file__).parent.parent / "docs" / "events.md").read_text()


# The heal.* keys users set before the settings had parts (config files, --set, old runs' config.yaml).
FLAT_KEYS = [
    "lr",
    "warmup_steps",
    "batch_size",
    "grad_accum",
    "clip",
    "seq_len",
    "train_tokens",
    "heldout_tokens",
    "data",
    "final_tokens",
    "final_trainable",
    "each_removal",
    "text_field",
    "trainable",
    "trainable_k",
    "train_norm",
    "train_head",
    "untie_head",
    "kl_scale",
    "kl_reference_tokens",
    "mse_scale",
    "mse_norm",
    "kl_input",
    "direction",
    "temperature",
    "reduction",
    "hidden",
    "final_norm",
    "cached",
    "fused_head",
    "head_matmul",
    "teacher_topk",
    "cache_limit_mb",
    "teacher_store_mb",
    "checkpoint_every_s",
    "early_stop",
    "eval_every",
    "patience",
    "min_delta",
]


def test_every_flat_key_of_older_configs_reads_and_writes_back():
    written = HealSettings().model_dump()
    assert set(FLAT_KEYS) <= set(written)  # config.yaml keeps its keys
    old = dict.fromkeys(FLAT_KEYS)
    for key in FLAT_KEYS:
        old[key] = written[key]
    old.update(lr=1e-4, hidden="last", train_tokens=512, final_tokens=256, data="mixed", trainable="radius")
    again = HealSettings.model_validate(old).model_dump()
    assert {k: again[k] for k in FLAT_KEYS} == old
