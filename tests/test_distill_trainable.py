import pytest

from engine.config import TrainableSettings
from engine.distill.trainable import choose_trainable, freeze_except, gaps, newest_gap
from engine.models.surgery import layer_map, remove_layers
from tests.tiny_models import tiny_model


def test_adjacent_to_the_newest_gap():
    # teacher 0..9, removed 4: current map [0,1,2,3,5,...]; the gap sits between current 3 and 4
    mapping = [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert newest_gap(mapping, 4) == 4
    # the default trains every layer (measured: docs/results); k = 1 is the paper's two neighbours
    assert TrainableSettings().choice == "all" and TrainableSettings().k == 1
    pair = TrainableSettings(choice="adjacent")
    assert choose_trainable(mapping, 10, 4, pair) == [3, 4]
    two = TrainableSettings(choice="adjacent", k=2)  # two on each side
    assert choose_trainable(mapping, 10, 4, two) == [2, 3, 4, 5]
    # only the newest gap, not an older one (radius takes every gap)
    assert choose_trainable([0, 2, 3, 4, 5, 7, 8, 9], 10, 6, two) == [3, 4, 5, 6]
    # removing the first or last layer leaves neighbours on one side only
    assert choose_trainable([1, 2, 3], 4, 0, pair) == [0]
    assert choose_trainable([0, 1, 2], 4, 3, pair) == [2]
    assert choose_trainable([1, 2, 3], 4, 0, two) == [0, 1]


def test_radius_around_every_gap_and_last_and_all():
    mapping = [0, 2, 3, 4, 6, 7]  # gaps where 1 and 5 were, and at the end (8 of 0..8 removed)
    assert gaps(mapping, 9) == [1, 4, 6]
    assert choose_trainable(mapping, 9, 5, TrainableSettings(choice="radius", k=1)) == [0, 1, 3, 4, 5]
    assert choose_trainable(mapping, 9, 5, TrainableSettings(choice="radius", k=2)) == [0, 1, 2, 3, 4, 5]
    assert choose_trainable(mapping, 9, 5, TrainableSettings(choice="last", k=2)) == [4, 5]
    assert choose_trainable(mapping, 9, 5, TrainableSettings(choice="all")) == list(range(6))


def test_freeze_trains_only_the_chosen_layers_and_never_tied_embeddings():
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    remove_layers(model, 2)
    trainable = choose_trainable(layer_map(model), 6, 2, TrainableSettings(choice="adjacent", k=1))
    assert trainable == [1, 2]
    params = freeze_except(model, trainable, TrainableSettings(choice="adjacent", k=1))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in names)
    assert len(params) == len(names)
    assert not model.model.embed_tokens.weight.requires_grad
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="tied"):
        freeze_except(model, trainable, TrainableSettings(train_head=True))
