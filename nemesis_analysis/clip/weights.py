"""Where a model's weights come from: the tiny CLIP cache, a local file, an open_clip tag, or none.

Tags (``openai``, ``laion2b_s34b_b79k``...) are looked up in the local caches first (the Hugging
Face hub cache, then open_clip's legacy ``~/.cache/clip`` folder), so a cached model loads without
any network call; ``offline`` (or ``HF_HUB_OFFLINE=1``) stops there with the file to place.

QuickGELU: OpenAI's CLIPs (and a few others) were trained with QuickGELU, open_clip's plain configs
use GELU. Loading such weights into a GELU model runs without error and silently costs accuracy, so
the architecture is resolved from the weights (``RN50`` + ``openai`` builds ``RN50-quickgelu``) and
an explicit contradiction is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.pretrained import get_pretrained_cfg

from nemesis_analysis.clip import tiny
from nemesis_analysis.clip.architectures import RANDOM_INIT_SEED, TINY_BACKBONE, random_init
from nemesis_analysis.errors import ModelError
from nemesis_analysis.storage import safeload

logger = logging.getLogger(__name__)

RANDOM_TAGS = ("none", "random")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar")
QUICKGELU_SUFFIX = "-quickgelu"
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # open_clip's default file name in a hub repo
LEGACY_CACHE_DIR = Path("~/.cache/clip")  # open_clip's download folder for url-only weights
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # OpenAI's JIT state has these buffers


def offline_requested(offline: bool = False) -> bool:
    """``offline``, or the Hugging Face offline environment variables set to a true value."""
    return offline or any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS
    )


# ------------------------------------------------------------------------------------------ QuickGELU


def base_architecture(backbone: str) -> str:
    """``RN50-quickgelu`` -> ``RN50``; other names unchanged."""
    return backbone[: -len(QUICKGELU_SUFFIX)] if backbone.endswith(QUICKGELU_SUFFIX) else backbone


def architecture_uses_quick_gelu(backbone: str) -> bool:
    config = open_clip.get_model_config(backbone) or {}
    return bool(config.get("quick_gelu", False)) or backbone.endswith(QUICKGELU_SUFFIX)


@dataclass(frozen=True)
class Architecture:
    """What open_clip builds: a model config name, and whether to force QuickGELU on top of it."""

    name: str
    force_quick_gelu: bool = False

    @property
    def quick_gelu(self) -> bool:
        return self.force_quick_gelu or architecture_uses_quick_gelu(self.name)


def resolve_architecture(
    backbone: str, weights_quick_gelu: bool | None, weights_label: str = "the weights"
) -> Architecture:
    """The architecture to build for weights trained with (True) or without (False) QuickGELU; None: unknown.

    Weights that need QuickGELU on a GELU config get the ``-quickgelu`` variant (or QuickGELU forced
    when there is none); a QuickGELU config asked for GELU-trained weights is a mistake: refused.
    """
    if weights_quick_gelu is None:
        return Architecture(backbone)
    uses_quick = architecture_uses_quick_gelu(backbone)
    if weights_quick_gelu and not uses_quick:
        variant = backbone + QUICKGELU_SUFFIX
        if variant in open_clip.list_models():
            logger.info("%s were trained with QuickGELU: building %s", weights_label, variant)
            return Architecture(variant)
        return Architecture(backbone, force_quick_gelu=True)
    if not weights_quick_gelu and uses_quick:
        raise ModelError(
            f"QuickGELU mismatch: {backbone} uses QuickGELU but {weights_label} were trained with GELU; "
            f"use --backbone {base_architecture(backbone)} (QuickGELU is chosen automatically from the weights)"
        )
    return Architecture(backbone)


def tag_config(backbone: str, tag: str) -> dict:
    """open_clip's pretrained config of ``backbone``/``tag`` ({} if unknown), also for ``-quickgelu`` names."""
    return get_pretrained_cfg(backbone, tag) or get_pretrained_cfg(base_architecture(backbone), tag) or {}


def resolve_tag_architecture(backbone: str, tag: str) -> Architecture:
    """Architecture for an open_clip tag, from the tag's recorded ``quick_gelu`` (no download)."""
    config = tag_config(backbone, tag)
    if not config:
        raise ModelError(
            f"unknown weights {tag!r} for {backbone}; tags: {_tags_text(backbone)}; or pass a weights file path"
        )
    return resolve_architecture(backbone, bool(config.get("quick_gelu", False)), f"{base_architecture(backbone)}/{tag}")


def _tags_text(backbone: str) -> str:
    tags = sorted(
        set(open_clip.list_pretrained_tags_by_model(backbone))
        | set(open_clip.list_pretrained_tags_by_model(base_architecture(backbone)))
    )
    return ", ".join(tags) if tags else "none known"


# -------------------------------------------------------------------------------------- local caches


@dataclass(frozen=True)
class CacheLocation:
    """Where a tag's weights live (or would live) locally, for messages and lookups."""

    hf_repo: str | None  # e.g. timm/resnet50_clip.openai
    hf_filenames: tuple[str, ...]  # accepted file names in that repo, preferred first
    legacy_file: Path | None  # open_clip's url download target


def cache_location(backbone: str, tag: str, cache_dir: Path | str | None = None) -> CacheLocation:
    config = tag_config(backbone, tag)
    hf_repo, filenames = None, ()
    if config.get("hf_hub"):
        hf_repo, filename = os.path.split(config["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        safe = tuple(open_clip.pretrained._get_safe_alternatives(filename))  # open_clip prefers these
        filenames = (*safe, filename)
    legacy = None
    if config.get("url"):
        legacy = Path(cache_dir or LEGACY_CACHE_DIR).expanduser() / os.path.basename(config["url"])
    return CacheLocation(hf_repo, filenames, legacy)


def cached_weights_path(backbone: str, tag: str, cache_dir: Path | str | None = None) -> Path | None:
    """The local file of ``backbone``/``tag`` if a cache holds it, else None. Never touches the network."""
    config = tag_config(backbone, tag)
    if config.get("file"):
        path = Path(config["file"]).expanduser()
        return path if path.is_file() else None
    location = cache_location(backbone, tag, cache_dir)
    if location.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in location.hf_filenames:
            found = try_to_load_from_cache(location.hf_repo, filename, cache_dir=str(cache_dir) if cache_dir else None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if location.legacy_file is not None and location.legacy_file.is_file():
        return location.legacy_file
    return None


def missing_weights_message(backbone: str, tag: str, cache_dir: Path | str | None = None) -> str:
    """One line: which file to place where (or pass --pretrained FILE)."""
    location = cache_location(backbone, tag, cache_dir)
    where = []
    if location.hf_repo:
        hub = str(cache_dir) if cache_dir else _hf_cache_root()
        where.append(
            f"download {location.hf_filenames[-1]} of https://huggingface.co/{location.hf_repo} into the Hugging Face "
            f"cache {hub} (`hf download {location.hf_repo} {location.hf_filenames[-1]}"
            + (f" --cache-dir {cache_dir}" if cache_dir else "")
            + "` on a machine with network, then copy the cache folder)"
        )
    if location.legacy_file is not None:
        where.append(
            f"place {location.legacy_file.name} (from {tag_config(backbone, tag)['url']}) at {location.legacy_file}"
        )
    return (
        f"weights {base_architecture(backbone)}/{tag} are not in the local cache and offline mode forbids downloading: "
        + " or ".join(where)
        + "; or pass --pretrained FILE"
    )


def _hf_cache_root() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_tags(backbone: str, cache_dir: Path | str | None = None) -> list[str]:
    """The pretrained tags of ``backbone`` whose weights are in a local cache."""
    return [t for t in open_clip.list_pretrained_tags_by_model(backbone) if cached_weights_path(backbone, t, cache_dir)]


# ---------------------------------------------------------------------------------------------- files


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI distributes its CLIPs as TorchScript archives (a zip with a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def infer_file_tag(backbone: str, path: Path) -> str | None:
    """The open_clip tag a local file was downloaded as, recognised by its url file name or hub repo folder."""
    resolved = str(Path(path).resolve())
    for tag in open_clip.list_pretrained_tags_by_model(base_architecture(backbone)):
        config = tag_config(backbone, tag)
        if config.get("url") and Path(path).name == os.path.basename(config["url"]):
            return tag
        if config.get("hf_hub"):
            repo = os.path.split(config["hf_hub"])[0]
            if f"models--{repo.replace('/', '--')}" in resolved:  # a file inside the hub cache
                return tag
    return None


def file_weights_quick_gelu(backbone: str, path: Path) -> tuple[bool | None, str | None]:
    """(trained with QuickGELU? None if unknown, the recognised tag)."""
    tag = infer_file_tag(backbone, path)
    if tag is not None:
        return bool(tag_config(backbone, tag).get("quick_gelu", False)), tag
    if is_torchscript_archive(path):
        return True, None  # only OpenAI's releases come as TorchScript, and they all use QuickGELU
    return None, None


def _read_torchscript_state(path: Path) -> dict[str, torch.Tensor]:
    # TorchScript archives run no Python pickle code; open_clip's openai loader reads them the same way.
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    return {k: v for k, v in state.items() if k not in JIT_EXTRA_KEYS}


def _build_from_file(architecture: Architecture, path: Path, preprocess: dict | None) -> torch.nn.Module:
    force_preprocess = {k: preprocess[k] for k in PREPROCESS_KEYS if preprocess and k in preprocess} or None
    try:
        if is_torchscript_archive(path):
            model = _create(architecture, None, force_preprocess)
            model.load_state_dict({k: v.float() for k, v in _read_torchscript_state(path).items()}, strict=True)
            return model
        return _create(architecture, str(path), force_preprocess)
    except ModelError:
        raise
    except Exception as error:  # open_clip raises many types for a bad file
        if safeload.is_unpickling_refusal(error) or path.suffix != ".safetensors":
            safeload.torch_load(path, "weights file")  # the one-line "not a plain tensor file" when that is it
        message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise ModelError(f"cannot load {path} into {architecture.name}: {message}") from None


def _create(architecture: Architecture, pretrained: str | None, force_preprocess: dict | None, **kwargs):
    return open_clip.create_model(
        architecture.name,
        pretrained=pretrained,
        force_quick_gelu=architecture.force_quick_gelu,
        force_preprocess_cfg=force_preprocess,
        weights_only=True,
        **kwargs,
    )


PROBE_TIMEOUT_S = 3.0


def _download_host(config: dict) -> str:
    from urllib.parse import urlparse

    if config.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    return urlparse(config.get("url", "")).hostname or "huggingface.co"


def _reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (DNS included)."""
    import socket

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe proves nothing: let the client try
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _suffix(architecture: Architecture, backbone: str) -> str:
    # The activation changes every feature: it is part of the weights' identity in cache keys.
    return "+quickgelu" if architecture.quick_gelu and not architecture_uses_quick_gelu(backbone) else ""


def create_with_weights(
    backbone: str,
    pretrained: str,
    checkpoints_dir: Path,
    offline: bool = False,
    progress: bool = True,
    cache_dir: Path | str | None = None,
) -> tuple[torch.nn.Module, str]:
    """Build ``backbone`` and load ``pretrained`` into it; returns (model, weights_id)."""
    if pretrained in RANDOM_TAGS:
        return random_init(backbone), f"random-init-seed{RANDOM_INIT_SEED}"
    if pretrained == "embedded":
        if backbone != TINY_BACKBONE:
            raise ModelError(
                f"--pretrained embedded only exists for {TINY_BACKBONE}; for {backbone} pass an open_clip tag "
                "(e.g. openai) or a weights file"
            )
        path = tiny.ensure_tiny_clip(checkpoints_dir, progress=progress)
        model = random_init(backbone)
        model.load_state_dict(tiny.load_tiny_state(path))
        return model, f"embedded:{path.stem}"
    path = Path(pretrained).expanduser()
    if path.suffix in WEIGHT_SUFFIXES or path.exists() or os.sep in pretrained:
        if not path.is_file():
            raise ModelError(f"weights file {path} not found; check the path given to --pretrained")
        quick_gelu, tag = file_weights_quick_gelu(backbone, path)
        label = f"the weights in {path.name}" + (f" ({tag})" if tag else "")
        architecture = resolve_architecture(backbone, quick_gelu, label)
        model = _build_from_file(architecture, path, tag_config(backbone, tag) if tag else None)
        return model, file_weights_id(path) + _suffix(architecture, backbone)
    architecture = resolve_tag_architecture(backbone, pretrained)
    config = tag_config(backbone, pretrained)
    cached = cached_weights_path(backbone, pretrained, cache_dir)
    weights_id = f"tag:{pretrained}" + _suffix(architecture, backbone)
    if cached is not None:
        logger.info("loading %s/%s from the local cache %s", backbone, pretrained, cached)
        return _build_from_file(architecture, cached, config), weights_id
    if offline_requested(offline):
        raise ModelError(missing_weights_message(backbone, pretrained, cache_dir))
    host = _download_host(config)
    if not _reachable(host):  # probe first: hub clients retry for about a minute before giving up
        raise ModelError(
            f"cannot reach {host} to download {base_architecture(backbone)}/{pretrained} (no network?): "
            + missing_weights_message(backbone, pretrained, cache_dir).split(": ", 1)[1]
        )
    try:
        model = _create(architecture, pretrained, None, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as error:
        raise ModelError(
            f"weights {backbone}/{pretrained} could not be downloaded ({type(error).__name__}); download them where "
            "the network is reachable, or pass --pretrained PATH to a local weights file "
            f"({missing_weights_message(backbone, pretrained, cache_dir).split(': ', 1)[1]})"
        ) from None
    return model, weights_id


def file_weights_id(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"file:{path.name}:{digest}"
