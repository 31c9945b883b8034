"""Read a learned context from anywhere: our prompt artifacts, or a CoOp/Dassl checkpoint trained elsewhere.

A Dassl checkpoint (``output/.../prompt_learner/model.pth.tar-50``) is a dict ``{"state_dict":
{"ctx": ..., "token_prefix": ..., "token_suffix": ...}, "epoch": 50, "optimizer": ..., ...}``. Only
``ctx`` is a learned value; the prefix/suffix buffers are the frozen token embeddings, which the
:class:`~nemesis_analysis.prompts.PromptLearner` rebuilds from the model, so they are ignored. The
file is read with ``torch.load(..., weights_only=True)``: tensors and plain containers, no code.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch

from nemesis_analysis.errors import ModelError
from nemesis_analysis.prompts import ARTIFACT_META, ARTIFACT_TENSORS, PromptLearner, load_prompt

logger = logging.getLogger(__name__)

DASSL_PATTERN = re.compile(r"^model(?:-best)?\.pth\.tar(?:-(\d+))?$")  # model.pth.tar-50, model-best.pth.tar
DASSL_SUBFOLDER = "prompt_learner"  # CoOp's trainer registers its learner under this name


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


def read_dassl_checkpoint(path: Path) -> tuple[torch.Tensor, dict]:
    """(ctx as fp32, metadata) from a CoOp/Dassl ``model.pth.tar-N``; never unpickles code."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"cannot read CoOp checkpoint {path} safely ({first}); it must hold only tensors and plain values "
            "(torch.load weights_only=True)"
        ) from None
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
        raise ModelError(f"{path}: 'ctx' must be (n_ctx, width) or (n_classes, n_ctx, width), got {shape}")
    ctx = ctx.detach().float().cpu()
    ignored = sorted(k for k in state if k != "ctx")
    if ignored:
        logger.info("%s: using ctx, ignoring %s (rebuilt from the model)", path.name, ", ".join(ignored))
    metadata = {
        "source": "coop-checkpoint",
        "path": str(path),
        "epoch": checkpoint.get("epoch") if isinstance(checkpoint, dict) else None,
        "csc": ctx.dim() == 3,
        "n_ctx": int(ctx.shape[-2]),
        "width": int(ctx.shape[-1]),
    }
    return ctx, metadata


def load_prompt_any(path: Path | str, learner: PromptLearner | None = None) -> tuple[torch.Tensor, dict]:
    """Read a context from a prompt artifact (folder or file) or a CoOp/Dassl checkpoint: (ctx, metadata).

    With ``learner`` the context's shape is checked against it (n_ctx, width, generic vs CSC and the
    class count), so a checkpoint from another backbone or dataset fails with one clear line.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"prompt {path} not found; pass a prompt artifact folder or a CoOp model.pth.tar-N file")
    directory = path if path.is_dir() else path.parent
    if (directory / ARTIFACT_TENSORS).is_file() and (directory / ARTIFACT_META).is_file():
        ctx, metadata = load_prompt(directory)
        metadata = {**metadata, "source": "artifact", "path": str(directory)}
    else:
        checkpoint = find_dassl_checkpoint(path)
        if checkpoint is None:
            raise ModelError(
                f"{path} is neither a prompt artifact ({ARTIFACT_TENSORS} + {ARTIFACT_META}) nor a CoOp checkpoint "
                f"({DASSL_SUBFOLDER}/model.pth.tar-N)"
            )
        ctx, metadata = read_dassl_checkpoint(checkpoint)
    ctx = ctx.float()
    if learner is not None:
        check_context_fits(ctx, learner, source=path.name)
    return ctx, metadata


def check_context_fits(ctx: torch.Tensor, learner: PromptLearner, source: str = "checkpoint") -> None:
    """Raise a one-line ModelError unless ``ctx`` has the learner's layout."""
    backbone = learner.loaded.backbone
    if ctx.dim() not in (2, 3):
        raise ModelError(f"{source}: context must be (n_ctx, width) or (n_classes, n_ctx, width), got {tuple(ctx.shape)}")
    width, n_ctx = int(ctx.shape[-1]), int(ctx.shape[-2])
    if width != learner.width:
        raise ModelError(
            f"{source}: checkpoint context has width {width} but {backbone}'s text width is {learner.width}; "
            "use the --backbone the prompt was trained with"
        )
    if n_ctx != learner.n_ctx:
        raise ModelError(
            f"{source}: checkpoint has {n_ctx} context vectors but the prompt is set up for {learner.n_ctx}; "
            f"pass --n-ctx {n_ctx}"
        )
    csc = ctx.dim() == 3
    if csc != bool(learner.config.csc):
        hint = "add --csc" if csc else "drop --csc"
        kind = "class-specific" if csc else "generic"
        raise ModelError(f"{source}: checkpoint has {kind} context {tuple(ctx.shape)}; {hint}")
    if csc and int(ctx.shape[0]) != learner.num_classes:
        raise ModelError(
            f"{source}: checkpoint has class-specific context for {int(ctx.shape[0])} classes but the dataset has "
            f"{learner.num_classes}; use the dataset the prompt was trained on"
        )
