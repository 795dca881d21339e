"""ReplaceMe: replace a removed block of layers by a linear map fused into the layer before it.

Shopkhoev et al., "ReplaceMe: Network Simplification via Depth Pruning and Transformer Block
Linearization" (arXiv 2505.02819). Training-free: for a contiguous block of decoder layers about to be
removed, with

    M  the MLP output of the layer just before the block (what it adds to the residual stream),
    Y  the residual stream that M is added to (so the layer's output is Y + M),
    L  the output of the block's last layer,

estimate the linear map T minimising ||M T + Y - L||^2 over calibration tokens (closed form), then
fuse it into that layer's MLP down projection: ``down_proj(x) T`` is ``x (T^T W)^T`` (+ ``b T``), so
``W <- T^T W`` and ``b <- T^T b``. The student stays a plain architecture with exactly the parameters
of plain removal.

Only M^T M and M^T (L - Y) (each d x d, float64) are accumulated: no activation is kept beyond one
batch. The estimate shrinks towards the identity (plain removal) rather than towards zero, by a
ridge term relative to the mean eigenvalue of M^T M, so directions the calibration never excites
keep the plain removal's behaviour.

What the fuse needs, and what is refused (``SurgeryError``, one line):
  * the block must be a contiguous run of the *current* layers (originals that became neighbours
    because the layers between them were removed earlier count as contiguous);
  * some layer must precede it: the first remaining layer has no MLP before it, and fusing into
    the embedding instead would also move a tied LM head. Remove such a block without a bridge;
  * the layer before must add its MLP output straight to the residual stream (Llama, Mistral,
    Phi-3, Qwen2, Qwen3). Gemma 2/3 normalise the MLP output (post-feed-forward RMSNorm) before
    the add, and a matrix does not pass through a normalisation, so the fuse would not be exact.

``block_distances`` is ReplaceMe's block-selection metric: for every run of n consecutive current
layers, the angular distance between the input of its first layer and the output of its last.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.config import BATCH_TOKENS

from .adapters import PLAIN_RESIDUAL_LAYERS, DecoderAdapter, adapter_for
from .errors import SurgeryError
from .surgery import _ranges, current_index, remove_layers

Progress = Callable[[str, int, int], None]  # (what, done, total)
# list[list[int]] (padded here, padding left out of every statistic), an (N, T) token tensor (every
# token real), or objects with an ``ids`` list such as the runner's calibration ScoredSequence.
Calibration = Sequence[Sequence[int]] | torch.Tensor | Sequence[object]

DEFAULT_RIDGE = 1e-4


@dataclass
class BridgeFit:
    """The estimated map and how well it predicts the removed block's output on the calibration."""

    removed: list[int]  # original indices of the block
    into: int  # original index of the layer whose down projection absorbs the map
    transform: torch.Tensor  # T, [hidden, hidden], float64 on the CPU
    tokens: int  # calibration tokens the fit saw (padding excluded)
    ridge: float
    # ||M T + Y - L|| / ||L - Y|| over all tokens; plain_* is the same for plain removal (T = I)
    relative_residual: float
    plain_relative_residual: float
    # mean over tokens of cos(M T + Y, L); plain_cosine for plain removal. None when not measured.
    cosine: float | None = None
    plain_cosine: float | None = None

    def summary(self) -> dict:
        """The fit as plain numbers, for an event."""
        return {
            "removed": list(self.removed),
            "into": self.into,
            "tokens": self.tokens,
            "ridge": self.ridge,
            "relative_residual": self.relative_residual,
            "plain_relative_residual": self.plain_relative_residual,
            "cosine": self.cosine,
            "plain_cosine": self.plain_cosine,
        }


# --- calibration batches ---------------------------------------------------------------------------
def _rows(calibration: Calibration) -> list[list[int]]:
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() != 2:
            raise ValueError(
                f"calibration tokens must be a 2-D (sequences, tokens) tensor, not {tuple(calibration.shape)}"
            )
        rows = calibration.tolist()
    else:
        rows = [list(getattr(row, "ids", row)) for row in calibration]
    rows = [row for row in rows if row]
    if not rows:
        raise ValueError("no calibration tokens")
    return rows


def _batches(rows: list[list[int]], pad_id: int, batch_tokens: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (ids, mask) batches of at most ``batch_tokens`` (one longer sequence goes alone)."""
    groups, current = [], []
    for row in sorted(rows, key=len):
        if current and len(row) * (len(current) + 1) > batch_tokens:
            groups.append(current)
            current = []
        current.append(row)
    if current:
        groups.append(current)
    out = []
    for group in groups:
        width = max(len(row) for row in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(group):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        out.append((ids.to(device), mask.to(device)))
    return out


def _accumulator_device(model) -> torch.device:
    device = next(model.parameters()).device
    # float64 matmuls: CPU and CUDA have them, other backends (MPS) do not.
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


# --- checks ----------------------------------------------------------------------------------------
def check_bridgeable(model, originals: list[int] | int) -> tuple[int, int]:
    """Raise SurgeryError unless a bridge can replace ``originals``; return (first, last) current index."""
    originals = [originals] if isinstance(originals, int) else list(originals)
    if not originals:
        raise SurgeryError("no layers given for the bridge")
    if len(set(originals)) != len(originals):
        raise SurgeryError(f"duplicate layers in {originals}")
    adapter = adapter_for(model)
    mapping = adapter.layer_map()
    current = sorted(current_index(model, o) for o in originals)
    if current != list(range(current[0], current[-1] + 1)):
        raise SurgeryError(
            f"a bridge replaces one contiguous run of layers; {sorted(originals)} are not neighbours "
            f"in the current model (remaining: {_ranges(mapping)})"
        )
    first, last = current[0], current[-1]
    if first == 0:
        raise SurgeryError(
            f"layer {mapping[0]} is the first remaining layer: no MLP before it can absorb a bridge "
            "(fusing into the embedding would move a tied LM head too); remove it without a bridge"
        )
    before = adapter.layers[first - 1]
    kind = type(before).__name__
    if kind not in PLAIN_RESIDUAL_LAYERS or not hasattr(getattr(before, "mlp", None), "down_proj"):
        raise SurgeryError(
            f"{adapter.model_type}: the bridge is fused into the MLP down projection of layer {mapping[first - 1]}, "
            f"which is exact only when the MLP output is added straight to the residual stream; {kind} "
            "normalises it first, so remove these layers without a bridge"
        )
    return first, last


# --- activations of one batch ----------------------------------------------------------------------
def _block_activations(
    adapter: DecoderAdapter,
    first: int,
    last: int,
    ids: torch.Tensor,
    mask: torch.Tensor,
    before_input: torch.Tensor | None = None,
):
    """At the real tokens: M (MLP output of layer first-1), that layer's output Y + M, L (layer last's
    output); and the whole input of layer first-1, from which a later pass over the batch can start."""
    inputs = adapter.prepare(ids, mask)
    before = first - 1
    hidden = adapter.run_layers(inputs.hidden, inputs, stop=before) if before_input is None else before_input
    captured = []
    handle = adapter.layers[before].mlp.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        out = adapter.run_layer(before, hidden, inputs)
    finally:
        handle.remove()
    block_out = adapter.run_layers(out, inputs, start=first, stop=last + 1)
    real = mask.bool()
    return captured[0][real], out[real], block_out[real], hidden


# --- estimate, fuse, remove ------------------------------------------------------------------------
@torch.no_grad()
def estimate_bridge(
    model,
    originals: list[int],
    calibration: Calibration,
    pad_id: int,
    batch_tokens: int = BATCH_TOKENS,
    ridge: float = DEFAULT_RIDGE,
    measure: bool = True,
    progress: Progress | None = None,
) -> BridgeFit:
    """Estimate the map T replacing the contiguous block ``originals`` (original indices); the model is unchanged.

    ``ridge`` is relative to the mean eigenvalue of M^T M and shrinks T towards the identity.
    ``measure`` runs the block (and the layer before it) over the calibration a second time, to
    report the mean per-token cosine of the prediction against the block's real output; the
    residuals come from the accumulated matrices.
    """
    originals = [originals] if isinstance(originals, int) else list(originals)
    first, last = check_bridgeable(model, originals)
    adapter = adapter_for(model)
    mapping = adapter.layer_map()
    device = next(model.parameters()).device
    acc = _accumulator_device(model)
    batches = _batches(_rows(calibration), pad_id, batch_tokens, device)
    d = model.config.hidden_size
    gram = torch.zeros(d, d, dtype=torch.float64, device=acc)  # M^T M
    cross = torch.zeros(d, d, dtype=torch.float64, device=acc)  # M^T R, R = L - Y
    target_sq = torch.zeros((), dtype=torch.float64, device=acc)  # ||R||^2
    tokens = 0
    # The measuring pass starts at the layer before the block, from its input kept here: one hidden
    # state per calibration token (in the model's dtype), not the prefix's forward a second time.
    starts = []
    for number, (ids, mask) in enumerate(batches):
        m, out, block_out, hidden = _block_activations(adapter, first, last, ids, mask)
        if measure:
            starts.append(hidden)
        m = m.to(acc, torch.float64)
        r = block_out.to(acc, torch.float64) - out.to(acc, torch.float64) + m
        gram += m.T @ m
        cross += m.T @ r
        target_sq += (r * r).sum()
        tokens += m.shape[0]
        if progress:
            progress("bridge fit", number + 1, len(batches))

    eye = torch.eye(d, dtype=torch.float64, device=acc)
    lam = ridge * float(torch.trace(gram)) / d
    try:
        transform = torch.linalg.solve(gram + lam * eye, cross + lam * eye)
    except torch.linalg.LinAlgError as exc:
        raise SurgeryError(
            f"the bridge's least squares is singular on this calibration (raise the ridge above {ridge})"
        ) from exc

    def relative(t: torch.Tensor) -> float:
        # ||M T - R||^2 = tr(T^T M^T M T) - 2 tr(T^T M^T R) + ||R||^2
        sq = (t * (gram @ t)).sum() - 2 * (t * cross).sum() + target_sq
        return math.sqrt(max(float(sq), 0.0) / max(float(target_sq), 1e-300))

    fit = BridgeFit(
        removed=[mapping[j] for j in range(first, last + 1)],
        into=mapping[first - 1],
        transform=transform.cpu(),
        tokens=tokens,
        ridge=ridge,
        relative_residual=relative(transform),
        plain_relative_residual=relative(eye),
    )
    if measure:
        fit.cosine, fit.plain_cosine = _cosines(adapter, first, last, batches, starts, transform, progress)
    return fit


def _cosines(adapter, first, last, batches, starts, transform, progress) -> tuple[float, float]:
    """Mean per-token cos(M T + Y, L) and cos(M + Y, L) (plain removal)."""
    acc = transform.device
    delta = transform - torch.eye(transform.shape[0], dtype=transform.dtype, device=acc)
    sums = torch.zeros(2, dtype=torch.float64)
    tokens = 0
    for number, ((ids, mask), start) in enumerate(zip(batches, starts)):
        m, out, block_out, _ = _block_activations(adapter, first, last, ids, mask, start)
        m, out, target = (t.to(acc, torch.float64) for t in (m, out, block_out))
        bridged = out + m @ delta  # Y + M T
        sums[0] += torch.nn.functional.cosine_similarity(bridged, target, dim=-1).sum().cpu()
        sums[1] += torch.nn.functional.cosine_similarity(out, target, dim=-1).sum().cpu()
        tokens += m.shape[0]
        if progress:
            progress("bridge check", number + 1, len(batches))
    return float(sums[0] / tokens), float(sums[1] / tokens)


@torch.no_grad()
def fuse_bridge(model, before_original: int, transform: torch.Tensor) -> None:
    """Fold T into the MLP down projection of layer ``before_original``: W <- T^T W, b <- T^T b."""
    adapter = adapter_for(model)
    layer = adapter.layers[current_index(model, before_original)]
    kind = type(layer).__name__
    if kind not in PLAIN_RESIDUAL_LAYERS or not hasattr(getattr(layer, "mlp", None), "down_proj"):
        raise SurgeryError(
            f"{adapter.model_type}: cannot fuse a bridge into layer {before_original}: {kind} does not add its "
            "MLP output straight to the residual stream"
        )
    down = layer.mlp.down_proj
    d = down.weight.shape[0]
    if tuple(transform.shape) != (d, d):
        raise SurgeryError(f"bridge map of shape {tuple(transform.shape)} does not fit hidden size {d}")
    t = transform.to(down.weight.device, torch.float64)
    down.weight.copy_((t.T @ down.weight.to(torch.float64)).to(down.weight.dtype))
    if down.bias is not None:
        down.bias.copy_((down.bias.to(torch.float64) @ t).to(down.bias.dtype))


def remove_with_bridge(
    model,
    originals: list[int],
    calibration: Calibration,
    pad_id: int,
    batch_tokens: int = BATCH_TOKENS,
    ridge: float = DEFAULT_RIDGE,
    measure: bool = True,
    progress: Progress | None = None,
) -> BridgeFit:
    """Estimate the bridge for the contiguous block ``originals``, remove the block, fuse the map.

    Every check runs before any work, and the model is changed only once the estimate succeeded.
    The new layer map is on the model (``surgery.layer_map``), as after ``remove_layers``.
    """
    fit = estimate_bridge(model, originals, calibration, pad_id, batch_tokens, ridge, measure, progress)
    remove_layers(model, fit.removed)
    fuse_bridge(model, fit.into, fit.transform)
    return fit


# --- block selection -------------------------------------------------------------------------------
@torch.no_grad()
def block_distances(
    model,
    n: int,
    calibration: Calibration,
    pad_id: int,
    batch_tokens: int = BATCH_TOKENS,
    metric: str = "angular",
    include_first: bool = False,
    progress: Progress | None = None,
) -> dict[int, float]:
    """{original index of a block's first layer: distance} for every run of ``n`` consecutive current layers.

    The distance is between the block's input and its last layer's output, per real token, averaged:
    ``angular`` is arccos(cos)/pi (ReplaceMe's code), ``cosine`` is 1 - cos. Blocks starting at the
    first remaining layer cannot take a bridge and are left out unless ``include_first``.
    The block starting at original s is ``layer_map[i : i + n]`` with ``layer_map[i] == s``.
    """
    if metric not in ("angular", "cosine"):
        raise ValueError(f"unknown block distance '{metric}' (angular or cosine)")
    adapter = adapter_for(model)
    count = adapter.num_layers
    if not 1 <= n < count:
        raise SurgeryError(f"a block of {n} layers does not fit a model of {count} layers (1 to {count - 1})")
    device = next(model.parameters()).device
    starts = list(range(0 if include_first else 1, count - n + 1))
    if not starts:
        raise SurgeryError(f"no block of {n} layers has a layer before it in a model of {count} layers")
    sums = torch.zeros(count - n + 1, dtype=torch.float64)
    tokens = 0
    batches = _batches(_rows(calibration), pad_id, batch_tokens, device)
    for number, (ids, mask) in enumerate(batches):
        inputs = adapter.prepare(ids, mask)
        real = mask.bool()
        hidden = inputs.hidden
        states = deque([hidden[real]], maxlen=n + 1)  # states[0] is the input of layer j + 1 - n
        for j in range(count):
            hidden = adapter.run_layer(j, hidden, inputs)
            states.append(hidden[real])
            if j + 1 >= n:
                cos = torch.nn.functional.cosine_similarity(states[0].double(), states[-1].double(), dim=-1).clamp(
                    -1, 1
                )
                value = torch.arccos(cos) / math.pi if metric == "angular" else 1 - cos
                sums[j + 1 - n] += value.sum().cpu()
        tokens += int(real.sum())
        if progress:
            progress("block distances", number + 1, len(batches))
    mapping = adapter.layer_map()
    return {mapping[s]: float(sums[s] / tokens) for s in starts}
