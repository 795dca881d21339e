"""ReplaceMe bridge: time of estimate + fuse for one removed layer, quality of the fit, held-out effect.

For each layer: the bridge is estimated on calibration blocks of the embedded distillation text
(never the evaluation data), the layer is removed and the map fused; reported are the time of
estimate + fuse (with and without the second, measuring pass), the fit (relative residual, mean
per-token cosine, each against plain removal) and the KL(original || pruned) of the next-token
distribution on held-out blocks, bridged and plain.

    .venv/bin/python bench/bridge.py [--model smollm2-135m] [--layers 15,28] [--sequences 32] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="15,28", help="original layers, each removed alone")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--heldout", type=int, default=8, help="held-out sequences for the KL")
    args = parser.parse_args()

    import torch

    from engine.config import DataSettings
    from engine.distill.data import distill_blocks
    from engine.models.bridge import estimate_bridge, fuse_bridge
    from engine.models.loading import load_model
    from engine.models.surgery import remove_layers

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    data = DataSettings(
        seq_len=args.seq_len, train_tokens=args.sequences * args.seq_len, heldout_tokens=args.heldout * args.seq_len
    )
    calibration, heldout = distill_blocks(data, tokenizer)
    device = next(model.parameters()).device
    heldout = heldout[: args.heldout].to(device)
    print(
        f"{args.model} on {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads); "
        f"calibration {tuple(calibration.shape)}, held-out {tuple(heldout.shape)}"
    )

    with torch.no_grad():
        reference = torch.log_softmax(model(heldout).logits.float(), -1)

    def kl(pruned) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(pruned(heldout).logits.float(), -1)
        return float((reference.exp() * (reference - logp)).sum(-1).mean())

    pad = tokenizer.pad_token_id
    for layer in (int(x) for x in args.layers.split(",")):
        quick = copy.deepcopy(model)
        start = time.perf_counter()
        fit = estimate_bridge(quick, [layer], calibration, pad, args.batch_tokens, measure=False)
        remove_layers(quick, fit.removed)
        fuse_bridge(quick, fit.into, fit.transform)
        quick_s = time.perf_counter() - start

        start = time.perf_counter()
        fit = estimate_bridge(model, [layer], calibration, pad, args.batch_tokens, measure=True)
        measured_s = time.perf_counter() - start

        bridged = quick
        plain = copy.deepcopy(model)
        remove_layers(plain, [layer])
        print(
            f"layer {layer}: estimate+fuse {quick_s:.1f} s ({measured_s:.1f} s estimate with the measuring pass), "
            f"{fit.tokens} tokens; relative residual {fit.relative_residual:.4f} (plain {fit.plain_relative_residual:.4f}), "
            f"cosine {fit.cosine:.5f} (plain {fit.plain_cosine:.5f}); held-out KL bridged {kl(bridged):.5f}, plain {kl(plain):.5f}"
        )
        del bridged, plain, quick
    return 0


if __name__ == "__main__":
    sys.exit(main())
