import pytest
import torch

from engine.distill.cache import BlockStore


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32])
@pytest.mark.parametrize("limit", [1 << 30, 0], ids=["ram", "spilled"])
def test_block_store_round_trips_in_ram_and_on_disk(tmp_path, dtype, limit):
    store = BlockStore(6, (3, 4), dtype, tmp_path, limit)
    assert store.on_disk is (limit == 0)
    values = (torch.arange(6 * 12).reshape(6, 3, 4) - 20).to(dtype)
    store[0:4] = values[0:4]
    store[4:6] = values[4:6]
    assert torch.equal(store[:], values)
    picked = torch.tensor([5, 1, 3])
    assert torch.equal(store[picked].to(dtype), values[picked])
    path = store.path
    store.close()
    assert path is None or not path.exists()
