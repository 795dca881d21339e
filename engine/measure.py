"""What the compression bought: parameters, prefill and decode speed, peak memory of a model.

``python -m engine.measure MODEL [MODEL ...] --json`` measures each model (a teacher spec or an
exported student directory) in a process of its own, so that each peak memory is that model's
alone, on the device given (default: the best there is), and prints one JSON object per model.

Prefill: one forward pass over ``prompt_tokens`` tokens (batch ``batch``), best of ``repeats``.
Decode: ``new_tokens`` greedy tokens with the KV cache after that prompt, best of ``repeats``.
Peak memory: the process's resident-set high-water mark on the CPU (the weights included), the
allocator's peak on CUDA. Figures are this machine's: compare models measured in the same call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def measure_here(
    spec: str, device: str | None, prompt_tokens: int, new_tokens: int, batch: int, repeats: int, threads: int | None
) -> dict:
    """Measure one model in this process."""
    import torch

    from engine.models.loading import load_model
    from engine.models.surgery import parameter_count

    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(spec, device=device)
    model = loaded.model.eval()
    dev = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(10, min(vocab, 30000), (batch, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(
        dev
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.no_grad():
        model(ids[:, :16])  # warm up kernels and allocators
        prefill = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            model(ids, use_cache=True)
            sync()
            prefill.append(time.perf_counter() - start)
        decode = []
        for _ in range(repeats):
            out = model(ids, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            start = time.perf_counter()
            for _ in range(new_tokens):
                out = model(token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            decode.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {
        "model": spec,
        "layers": model.config.num_hidden_layers,
        "params": parameter_count(model),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch * prompt_tokens / min(prefill),
        "decode_tokens_per_s": batch * new_tokens / min(decode),
        "peak_memory_bytes": int(peak),
    }


def measure(
    specs: list[str],
    device: str | None = None,
    prompt_tokens: int = 256,
    new_tokens: int = 64,
    batch: int = 1,
    repeats: int = 3,
    threads: int | None = None,
) -> list[dict]:
    """Measure each model in a fresh process (one at a time: they would compete for the cores)."""
    results = []
    for spec in specs:
        command = [
            sys.executable,
            "-m",
            "engine.measure",
            spec,
            "--json",
            "--here",
            "--prompt-tokens",
            str(prompt_tokens),
            "--new-tokens",
            str(new_tokens),
            "--batch",
            str(batch),
            "--repeats",
            str(repeats),
        ]
        if device:
            command += ["--device", device]
        if threads:
            command += ["--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            raise RuntimeError(f"measuring {spec}: {lines[-1]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.measure", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model specs or exported student directories")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # measure in this process
    args = parser.parse_args(argv)
    try:
        if args.here:
            from engine.worker import _quiet_libraries

            _quiet_libraries()  # imports transformers: only the process that loads a model pays for it
            results = [
                measure_here(
                    args.models[0],
                    args.device,
                    args.prompt_tokens,
                    args.new_tokens,
                    args.batch,
                    args.repeats,
                    args.threads,
                )
            ]
        else:
            results = measure(
                args.models, args.device, args.prompt_tokens, args.new_tokens, args.batch, args.repeats, args.threads
            )
    except Exception as exc:
        print(f"ild: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['model']}: {r['layers']} layers, {r['params'] / 1e6:.1f}M params, prefill "
                f"{r['prefill_tokens_per_s']:.0f} tok/s, decode {r['decode_tokens_per_s']:.1f} tok/s, "
                f"peak {r['peak_memory_bytes'] / 2**20:.0f} MiB ({r['device']}, {r['dtype']})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
