"""Prompt artifacts: write ours, and read a learned context from ours, a CoOp/Dassl checkpoint or a bare tensor file.

Our artifact is a folder with ``prompt.safetensors`` (the context) and ``prompt.json`` (layout, class
names, backbone, run config). A Dassl checkpoint (``output/.../prompt_learner/model.pth.tar-50``) is a
dict ``{"state_dict": {"ctx": ..., "token_prefix": ..., "token_suffix": ...}, "epoch": 50, ...}``; only
``ctx`` is learned (the prefix/suffix buffers are rebuilt from the model), and it is read with
``torch.load(..., weights_only=True)``: tensors and plain containers, never code. The official PLOT code
saves the same dict with a generic ``ctx`` of shape ``(N, n_ctx, width)`` (N prompts) and buffers of
``N * num_classes`` rows; that layout is recognised and read as a PLOT context. A bare ``.safetensors``
file holding one tensor (or a ``ctx`` tensor) is read as a context with no metadata. :func:`check_fits`
is the one check that a context fits a loaded prompt method.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from nemesis_analysis.choices import plain
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.errors import ModelError
from nemesis_analysis.storage.fsio import atomic_path, atomic_write_json
from nemesis_analysis.storage.safeload import DamagedFileError, load_safetensors, read_json, torch_load

logger = logging.getLogger(__name__)

ARTIFACT_TENSORS = "prompt.safetensors"
ARTIFACT_META = "prompt.json"
DASSL_PATTERN = re.compile(r"^model(?:-best)?\.pth\.tar(?:-(\d+))?$")  # model.pth.tar-50, model-best.pth.tar
DASSL_SUBFOLDER = "prompt_learner"  # CoOp's trainer registers its learner under this name


# ------------------------------------------------------------------------------------------ our artifact


def save_prompt(directory: Path, ctx: Tensor, metadata: dict, extra: dict[str, Tensor] | None = None) -> Path:
    """Write ``prompt.safetensors`` (the context, plus a method's ``extra`` tensors such as CoCoOp's
    meta-network) and ``prompt.json`` (config, class names...), atomically."""
    directory = Path(directory)
    tensors = {"ctx": ctx, **(extra or {})}
    with atomic_path(directory / ARTIFACT_TENSORS, "the prompt artifact") as tmp:
        save_file({name: t.detach().float().cpu().contiguous() for name, t in tensors.items()}, str(tmp))
    atomic_write_json(directory / ARTIFACT_META, plain(metadata), "the prompt metadata")
    return directory


PROMPT_FIX = "save the prompt again, or pass another prompt"


def read_artifact(directory: Path, fix: str) -> tuple[dict[str, Tensor], dict]:
    """Every tensor of our prompt artifact by name (``ctx`` and a method's extras), and its metadata."""
    tensors, meta = directory / ARTIFACT_TENSORS, directory / ARTIFACT_META
    loaded = load_safetensors(tensors, fix, "prompt file")
    metadata = read_json(meta, fix, "prompt file")
    if "ctx" not in loaded or not isinstance(metadata, dict):
        what = f"no 'ctx' tensor in {tensors}" if "ctx" not in loaded else f"{meta} holds no JSON object"
        raise DamagedFileError(f"prompt file is damaged ({what}); {fix}")
    return loaded, metadata


def is_artifact(path: Path) -> bool:
    directory = path if path.is_dir() else path.parent
    return (directory / ARTIFACT_TENSORS).is_file() and (directory / ARTIFACT_META).is_file()


# --------------------------------------------------------------------------------------- Dassl checkpoints


def find_dassl_checkpoint(path: Path) -> Path | None:
    """The checkpoint file meant by ``path``: the file itself, or the latest epoch in a folder
    (``prompt_learner/`` or the run folder above it). None when there is none."""
    path = Path(path)
    if path.is_file():
        return path if DASSL_PATTERN.match(path.name) else None
    for folder in (path / DASSL_SUBFOLDER, path):
        if not folder.is_dir():
            continue
        candidates = [p for p in folder.iterdir() if p.is_file() and DASSL_PATTERN.match(p.name)]
        if candidates:
            # The highest epoch; model-best (no epoch) only when there is nothing else.
            def epoch_of(p: Path) -> int:
                number = DASSL_PATTERN.match(p.name).group(1)
                return int(number) if number is not None else -1

            return max(candidates, key=epoch_of)
    return None


def read_dassl_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict]:
    """(tensors: ``ctx`` as fp32 and a method's extras, metadata) from a CoOp/Dassl ``model.pth.tar-N``;
    never unpickles code. Each declared method's reader of the official layout (CoCoOp's meta-network,
    PLOT's N prompts) may claim the state dict and add to the metadata."""
    from nemesis_analysis.methods.registry import official_readers

    checkpoint = torch_load(path, "CoOp checkpoint")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "ctx" not in state:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(checkpoint).__name__
        raise ModelError(
            f"{path} is not a CoOp prompt-learner checkpoint: no 'ctx' in its state_dict (found {keys}); "
            f"pass the file under {DASSL_SUBFOLDER}/ (model.pth.tar-N)"
        )
    ctx = state["ctx"]
    if not isinstance(ctx, torch.Tensor) or ctx.dim() not in (2, 3):
        shape = tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
        raise ModelError(f"{path}: 'ctx' must be (n_ctx, width) or (num_classes, n_ctx, width), got {shape}")
    ctx = ctx.detach().float().cpu()
    metadata = {"source": "coop-checkpoint", "path": str(path),
                "epoch": checkpoint.get("epoch") if isinstance(checkpoint, dict) else None,
                "csc": ctx.dim() == 3, "n_ctx": int(ctx.shape[-2]), "width": int(ctx.shape[-1])}  # fmt: skip
    tensors = {"ctx": ctx}
    for _, reader in official_readers():
        claimed = reader(state, ctx, path)
        if claimed:
            tensors.update(claimed.pop("tensors", {}))
            metadata.update(claimed)
    ignored = sorted(k for k in state if k not in tensors)
    if ignored:
        logger.info(
            "%s: using %s, ignoring %s (rebuilt from the model)", path.name, ", ".join(tensors), ", ".join(ignored)
        )
    return tensors, metadata


def read_bare_tensor(path: Path, fix: str) -> tuple[dict[str, Tensor], dict]:
    """({"ctx": ctx}, metadata) from a ``.safetensors`` file holding one tensor or a ``ctx`` tensor."""
    tensors = load_safetensors(path, fix, "prompt file")
    if "ctx" not in tensors and len(tensors) != 1:
        raise ModelError(f"{path} holds {len(tensors)} tensors and none is named 'ctx'; save the context alone")
    ctx = tensors.get("ctx", next(iter(tensors.values())))
    return {"ctx": ctx.detach().float().cpu()}, {"source": "tensor-file", "path": str(path)}


# ------------------------------------------------------------------------------------------ one reader


@dataclass
class AnalysisPrompt:
    """A learned context read from disk, with what is known of where it came from."""

    ctx: Tensor  # (n_ctx, width) or (num_classes, n_ctx, width), fp32
    run_id: str  # the artifact's run_id, or a hash of its tensor file when it records none
    metadata: dict  # the artifact's metadata plus "source" and "path"
    prompt_config: PromptConfig | None  # the layout recorded with the context, when recorded
    path: Path
    tensors: dict[str, Tensor] = field(default_factory=dict)  # a method's other tensors (CoCoOp's meta-network)

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    @property
    def csc(self) -> bool:
        return self.ctx.dim() == 3 and not self.is_plot

    @property
    def num_prompts(self) -> int:
        """Prompts per class: N of a PLOT context (N, n_ctx, width), else 1."""
        return int(self.metadata.get("num_prompts", self.ctx.shape[0])) if self.is_plot else 1

    @property
    def n_positions(self) -> int:
        """Flat positions the corruption grid expands over: num_prompts * n_ctx."""
        return self.num_prompts * self.n_ctx

    @property
    def is_plot(self) -> bool:
        """A PLOT context (N, n_ctx, width): recorded by our artifact or recognised in an official checkpoint."""
        return "plot" in (self.metadata.get("method"), self.metadata.get("prompt_method"))


def read_prompt(path: Path | str, fix: str = PROMPT_FIX) -> AnalysisPrompt:
    """The one prompt reader: our artifact (folder or file), a CoOp/Dassl checkpoint (any declared method's
    official layout) or a bare tensor file. A damaged file is a one-line
    :class:`~nemesis_analysis.storage.safeload.DamagedFileError` naming it and ending in ``fix`` (a run
    folder passes "retrain with --force..."). Whether the prompt fits a method is :func:`check_fits`'s job."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(
            f"prompt {path} does not exist (not found); pass a prompt folder (prompt.safetensors + prompt.json) "
            "or a CoOp model.pth.tar-N file"
        )
    if is_artifact(path):
        directory = path if path.is_dir() else path.parent
        tensors, metadata = read_artifact(directory, fix)
        metadata, tensor_file = {**metadata, "source": "artifact", "path": str(directory)}, directory / ARTIFACT_TENSORS
    elif (checkpoint := find_dassl_checkpoint(path)) is not None:
        (tensors, metadata), tensor_file = read_dassl_checkpoint(checkpoint), checkpoint
    elif path.is_file() and path.suffix == ".safetensors":
        (tensors, metadata), tensor_file = read_bare_tensor(path, fix), path
    else:
        raise ModelError(
            f"{path} is neither a prompt artifact ({ARTIFACT_TENSORS} + {ARTIFACT_META}) nor a CoOp checkpoint "
            f"({DASSL_SUBFOLDER}/model.pth.tar-N) nor a .safetensors tensor file"
        )
    ctx = tensors.pop("ctx").float()
    run_id = metadata.get("run_id") or f"file-{hashlib.sha256(tensor_file.read_bytes()).hexdigest()[:12]}"
    return AnalysisPrompt(ctx, str(run_id), metadata, recorded_layout(metadata, ctx), path,
                          {name: t.float() for name, t in tensors.items()})  # fmt: skip


def recorded_layout(metadata: dict, ctx: Tensor) -> PromptConfig | None:
    """The prompt layout an artifact recorded (n_ctx, csc, class-token position), or None."""
    if "prompt" not in metadata:
        return None
    recorded = dict(metadata["prompt"])
    return PromptConfig(
        n_ctx=int(recorded.get("n_ctx", ctx.shape[-2])),
        csc=bool(recorded.get("csc", ctx.dim() == 3)),
        class_token_position=recorded.get("class_token_position", "end"),
    )


def check_fits(ctx: Tensor, method, metadata: dict | None = None, source: str = "checkpoint") -> None:
    """Raise a one-line ModelError unless ``ctx`` (and what ``metadata`` recorded) fits the loaded method."""
    if getattr(method, "name", "") == "plot" or (metadata or {}).get("method") == "plot":
        return check_plot_fits(ctx, method, metadata, source)
    meta, backbone = metadata or {}, method.loaded.backbone
    if ctx.dim() not in (2, 3):
        raise ModelError(
            f"{source}: context must be (n_ctx, width) or (num_classes, n_ctx, width), got {tuple(ctx.shape)}"
        )
    if meta.get("backbone") and meta["backbone"] != backbone:
        raise ModelError(
            f"{source} was trained on {meta['backbone']} but the model is {backbone}; "
            f"set backbone = {meta['backbone']} (and its pretrained weights)",
            "backbone",
        )
    width, n_ctx = int(ctx.shape[-1]), int(ctx.shape[-2])
    if width != method.width or meta.get("width", width) != method.width:
        raise ModelError(
            f"{source}: checkpoint context has width {width} but {backbone}'s text width is {method.width}; "
            "use the backbone the prompt was trained with",
            "backbone",
        )
    _check_classnames(meta.get("classnames"), method, source)
    if n_ctx != method.n_ctx:
        raise ModelError(
            f"{source}: checkpoint has {n_ctx} context vectors but the prompt is set up for {method.n_ctx}; "
            f"set prompt.n_ctx = {n_ctx}",
            "prompt.n_ctx",
        )
    csc = ctx.dim() == 3
    if csc != bool(method.config.csc):
        kind = "class-specific" if csc else "generic"
        raise ModelError(f"{source}: checkpoint has {kind} context {tuple(ctx.shape)}; set prompt.csc = {str(csc).lower()}",
                         "prompt.csc")  # fmt: skip
    if csc and int(ctx.shape[0]) != method.num_classes:
        raise ModelError(
            f"{source}: checkpoint has class-specific context for {int(ctx.shape[0])} classes but the dataset has "
            f"{method.num_classes}; use the dataset the prompt was trained on"
        )


def check_plot_fits(ctx: Tensor, method, metadata: dict | None = None, source: str = "checkpoint") -> None:
    """Raise a one-line ModelError unless a PLOT context (N, n_ctx, width) fits the loaded PLOT method."""
    meta, backbone = metadata or {}, method.loaded.backbone
    if getattr(method, "name", "") != "plot":
        raise ModelError(f"{source} holds PLOT prompts {tuple(ctx.shape)}; analyse it with prompt.method = plot",
                         "prompt.method")  # fmt: skip
    if meta.get("backbone") and meta["backbone"] != backbone:
        raise ModelError(f"{source} was trained on {meta['backbone']} but the model is {backbone}; "
                         f"set backbone = {meta['backbone']} (and its pretrained weights)", "backbone")  # fmt: skip
    if ctx.dim() != 3:
        raise ModelError(f"{source}: a PLOT context must be (prompts, n_ctx, width), got {tuple(ctx.shape)}")
    prompts, n_ctx, width = (int(n) for n in ctx.shape)
    if width != method.width:
        raise ModelError(f"{source}: checkpoint context has width {width} but {backbone}'s text width is "
                         f"{method.width}; use the backbone the prompt was trained with", "backbone")  # fmt: skip
    if prompts != method.num_prompts:
        raise ModelError(f"{source}: checkpoint has {prompts} prompts but the method is set up for "
                         f"{method.num_prompts}; set plot.num_prompts = {prompts}", "plot.num_prompts")  # fmt: skip
    if n_ctx != method.n_ctx:
        raise ModelError(f"{source}: checkpoint has {n_ctx} context vectors per prompt but the prompt is set up "
                         f"for {method.n_ctx}; set prompt.n_ctx = {n_ctx}", "prompt.n_ctx")  # fmt: skip
    if meta.get("num_classes") not in (None, method.num_classes):
        raise ModelError(f"{source} was learned for {meta['num_classes']} classes but the dataset has "
                         f"{method.num_classes}; use the dataset the prompt was trained on")  # fmt: skip
    _check_classnames(meta.get("classnames"), method, source)


def _check_classnames(names: list[str] | None, method, source: str) -> None:
    if names is None or list(names) == list(method.classnames):
        return
    extra = sorted(set(names) ^ set(method.classnames))[:3]
    detail = f"e.g. {', '.join(map(repr, extra))} differ" if extra else "the order differs"
    raise ModelError(
        f"{source} was learned for {len(names)} other class names than the dataset's "
        f"{len(method.classnames)} ({detail}); pass the dataset it was trained on"
    )
