"""Find a Stream-DiffVSR checkpoint (local folder or Hugging Face hub) and build the engine from it.

Hub downloads go through ``huggingface_hub`` and so honour ``HF_HOME``, ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE``; only the files the engine needs are fetched (no fp16 copies, no .bin duplicates
when safetensors exist). The text encoder is loaded on the CPU, run once for the empty prompt and
released.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel
from torch import nn

from .acceleration import Acceleration
from .architecture import MODEL_ID
from .device import check_attention, resolve_device, resolve_dtype
from .errors import CheckpointError
from .flow import FlowEstimator, FlowResolution, build_raft
from .networks import check_controlnet_config
from .options import EngineOptions
from .sampler import DDIMSampler
from .stream_diffvsr import StreamDiffVSR
from .vae import TemporalAutoencoderTiny
from .weights import read_state_dict

log = logging.getLogger(__name__)

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
COMPONENT_WEIGHTS = {
    "unet": DIFFUSERS_WEIGHTS,
    "controlnet": DIFFUSERS_WEIGHTS,
    "vae": DIFFUSERS_WEIGHTS,
    "text_encoder": TRANSFORMERS_WEIGHTS,
}
OVERRIDABLE = ("unet", "controlnet", "vae")
FIX_HINT = (
    "Fix: run `streamvsr download` on a machine with internet access (and copy its HF_HOME), "
    "or pass --model with the path of a local checkpoint folder."
)


def load_engine(
    model: str = MODEL_ID, options: EngineOptions | None = None, **overrides
) -> StreamDiffVSR:
    """Build the Stream-DiffVSR engine from a hub id or a local folder with ``options`` (default:
    ``EngineOptions()``), keywords overriding single ones: ``load_engine(path, device="cpu")``."""
    opts = replace(options or EngineOptions(), **overrides)
    acceleration = Acceleration(opts)
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    check_attention(opts.attention)
    acceleration.check(device)
    acceleration.tune_kernels(device)
    components = {name: getattr(opts, name) for name in OVERRIDABLE if getattr(opts, name)}
    root = resolve_checkpoint(model, opts.revision, skip=tuple(components))
    log.info(
        "loading %s from %s on %s (%s)", model, root, device, str(dtype).removeprefix("torch.")
    )

    raft = build_raft(opts.flow_model, opts.flow_weights)  # first: a bad file fails fast
    unet = _load_diffusers(UNet2DConditionModel, root, "unet", components.get("unet"))
    if unet.config.num_class_embeds is not None:
        raise CheckpointError(
            f"{root / 'unet'}: num_class_embeds is set, but Stream-DiffVSR passes no class labels"
        )
    controlnet = _load_diffusers(ControlNetModel, root, "controlnet", components.get("controlnet"))
    check_controlnet_config(controlnet)
    vae = load_vae(root / "vae", components.get("vae"))
    prompt_embeds = encode_empty_prompt(root)
    sampler = DDIMSampler.from_scheduler(_load_scheduler(root), opts.steps)
    flow = FlowEstimator(
        raft,
        FlowResolution(opts.flow_resolution),
        scale=vae.spatial_scale,
    )
    for module in (unet, controlnet, vae):
        module.to(device, dtype).eval().requires_grad_(False)
        acceleration.memory_format(module)
    if opts.attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
        controlnet.enable_xformers_memory_efficient_attention()
    return StreamDiffVSR(
        unet,
        controlnet,
        vae,
        sampler,
        prompt_embeds,
        flow.to(device),
        model_id=str(model),
        vae_tile=opts.vae_tile,
        acceleration=acceleration,
    )


# --- finding the checkpoint ------------------------------------------------------------------


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") != 1 or "\\" in model


def resolve_checkpoint(
    model: str, revision: str | None = None, skip: tuple[str, ...] = (), download: bool = True
) -> Path:
    """Local folder of the checkpoint: ``model`` itself if it is a folder, else a hub snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        check_layout(path, skip)
        return path
    if path.exists() or _looks_like_path(model):
        raise CheckpointError(
            f"model {model!r} is not a checkpoint folder (it "
            f"{'is a file' if path.exists() else 'does not exist'}). {FIX_HINT}"
        )
    root = _snapshot(model, revision, _allow_patterns(skip, ".safetensors"), download)
    missing = _components_without_weights(root, skip)
    if missing and download:  # an older upload may only have .bin weights
        root = _snapshot(model, revision, _allow_patterns(skip, ".bin"), download)
    check_layout(root, skip)
    return root


def _allow_patterns(skip: tuple[str, ...], suffix: str) -> list[str]:
    patterns = ["model_index.json", "scheduler/*.json", "tokenizer/*", "*/config.json"]
    for component, names in COMPONENT_WEIGHTS.items():
        if component in skip:
            continue
        patterns += [f"{component}/{n}" for n in names if n.endswith(suffix)]
    return patterns


def _snapshot(model: str, revision: str | None, patterns: list[str], download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{model!r}" + (f" (revision {revision})" if revision else "")
    try:
        folder = snapshot_download(
            model, revision=revision, allow_patterns=patterns, local_files_only=not download
        )
    except GatedRepoError as exc:
        raise CheckpointError(
            f"model {where} is gated: log in with `hf auth login`. ({exc})"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"model {where} was not found on the Hugging Face hub and is not a local folder. "
            f"{FIX_HINT}"
        ) from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"model {where}: no such revision on the hub.") from exc
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"model {where} is not in the local Hugging Face cache ({_hub_cache()}) and could not "
            f"be downloaded (offline mode, or no network). {FIX_HINT}"
        ) from exc
    except HFValidationError as exc:
        raise CheckpointError(
            f"model {where} is neither a folder nor a hub id. {FIX_HINT}"
        ) from exc
    except OSError as exc:  # network errors and HTTP errors are OSErrors in huggingface_hub
        raise CheckpointError(f"model {where} could not be downloaded: {exc}. {FIX_HINT}") from exc
    return Path(folder)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _weights_file(folder: Path, component: str) -> Path | None:
    for name in COMPONENT_WEIGHTS[component]:
        if (folder / name).is_file():
            return folder / name
    return None


def _components_without_weights(root: Path, skip: tuple[str, ...]) -> list[str]:
    return [c for c in COMPONENT_WEIGHTS if c not in skip and _weights_file(root / c, c) is None]


def check_layout(root: Path, skip: tuple[str, ...] = ()) -> None:
    """Raise a ``CheckpointError`` listing every file the checkpoint at ``root`` lacks."""
    missing = [
        f"{c}/config.json" for c in COMPONENT_WEIGHTS if not (root / c / "config.json").is_file()
    ]
    missing += [f"{c}/{COMPONENT_WEIGHTS[c][0]}" for c in _components_without_weights(root, skip)]
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    if not (root / "tokenizer").is_dir():
        missing.append("tokenizer/")
    if missing:
        raise CheckpointError(
            f"checkpoint at {root} is incomplete: missing {', '.join(missing)}. {FIX_HINT}"
        )


# --- loading components ----------------------------------------------------------------------


def _corrupt(component: str, where: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not load the {component} from {where}: {exc}. The file may be incomplete or "
        "corrupt: delete it and run `streamvsr download` again."
    )


def _load_strict(module: nn.Module, weights: Path, component: str) -> None:
    try:
        state = read_state_dict(weights)
    except Exception as exc:
        raise _corrupt(component, weights, exc) from exc
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # keys fit but shapes do not
        raise CheckpointError(
            f"{weights} does not fit the {component} architecture of its config: {exc}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights} does not fit the {component} architecture of its config: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def _component_paths(
    folder: Path, component: str, override: str | None
) -> tuple[Path, Path | None]:
    """(config folder, weights file) of a component; an override is a folder or a weights file."""
    if override is None:
        return folder, _weights_file(folder, component)
    path = Path(override).expanduser()
    if path.is_file():
        return folder, path
    if path.is_dir() and (path / "config.json").is_file():
        return path, _weights_file(path, component)
    raise CheckpointError(
        f"{component} override {override!r} is neither a weights file nor a folder with "
        "config.json and weights"
    )


def _load_diffusers(cls, root: Path, component: str, override: str | None = None):
    folder, weights = _component_paths(root / component, component, override)
    if weights is None:
        raise CheckpointError(f"{folder} has no {component} weights ({DIFFUSERS_WEIGHTS[0]})")
    try:
        model = cls.from_config(cls.load_config(folder))
    except Exception as exc:
        raise _corrupt(component, folder / "config.json", exc) from exc
    _load_strict(model, weights, component)
    return model


def load_vae(folder: Path, override: str | None = None) -> TemporalAutoencoderTiny:
    """The temporal VAE, built from ``vae/config.json``; every weight must match exactly."""
    config_folder, weights = _component_paths(folder, "vae", override)
    try:
        config = json.loads((config_folder / "config.json").read_text())
        vae = TemporalAutoencoderTiny.from_config(config)
    except Exception as exc:
        raise _corrupt("vae", config_folder / "config.json", exc) from exc
    if weights is None:
        raise CheckpointError(f"{config_folder} has no vae weights ({DIFFUSERS_WEIGHTS[0]})")
    _load_strict(vae, weights, "vae")
    return vae


def _load_scheduler(root: Path) -> DDIMScheduler:
    try:
        return DDIMScheduler.from_pretrained(root, subfolder="scheduler")
    except Exception as exc:
        raise _corrupt("scheduler", root / "scheduler", exc) from exc


def encode_empty_prompt(root: Path) -> torch.Tensor:
    """CLIP embedding of the empty prompt (1, 77, D), computed on the CPU; the encoder is freed."""
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        encoder = CLIPTextModel.from_pretrained(root / "text_encoder", torch_dtype=torch.float32)
    except Exception as exc:
        raise _corrupt("text encoder", root / "text_encoder", exc) from exc
    tokens = tokenizer(
        "",
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        embeds = encoder(tokens.input_ids)[0].clone()
    del encoder
    gc.collect()
    return embeds


# --- prefetching -----------------------------------------------------------------------------


def download(
    model: str = MODEL_ID,
    revision: str | None = None,
    flow_models: tuple[str, ...] = ("raft_large", "raft_small"),
) -> Path:
    """Fetch everything the engine needs into the local caches (model + RAFT weights)."""
    from .flow import RAFT_MODELS

    root = resolve_checkpoint(model, revision)
    for name in flow_models:
        _, weights = RAFT_MODELS[name]
        try:
            weights.get_state_dict(progress=True)
        except Exception as exc:
            raise CheckpointError(f"could not download {name} weights ({weights}): {exc}") from exc
    return root
