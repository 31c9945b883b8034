"""The training loop: CoOp, and CoOp + Nemesis (PUN, PAN, or their beta mix).

One run is a pure function of its :class:`RunConfig`. Test-split image features are encoded once and
reused every epoch. Each epoch draws its shuffling, augmentation and PAN positions from a generator
seeded by (seed, epoch), and the learning rate is a function of the epoch, so a run resumed from its
last saved epoch produces exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nemesis_analysis import nemesis, store
from nemesis_analysis.augment import augment_image
from nemesis_analysis.config import RunConfig
from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.data.fewshot import sample_train_shots, save_split
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.errors import ConfigError, TrainingDiverged
from nemesis_analysis.features import image_features
from nemesis_analysis.metrics import top1_accuracy
from nemesis_analysis.models import LoadedModel, load_model, resolve_device
from nemesis_analysis.progress import progress_bar
from nemesis_analysis.prompts import PromptLearner, learner_metadata, save_prompt

logger = logging.getLogger(__name__)

NORM_COLUMNS = {"norm": "l2", "norm_l1": "l1", "norm_inf": "inf"}
IN_MEMORY_LIMIT = 4096  # few-shot train sets up to this size are decoded once and kept in memory


def lr_at_epoch(epoch: int, config: RunConfig) -> float:
    """CoOp's schedule: ``warmup_lr`` for the warm-up epochs, then cosine from ``lr`` over the epochs."""
    optim = config.optim
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    return 0.5 * optim.lr * (1 + math.cos(math.pi * (epoch - optim.warmup_epochs) / config.num_epochs))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + epoch)


@dataclass
class Workspace:
    """Folders shared by every command: outputs, and where open_clip weights are cached."""

    checkpoints_dir: Path = Path("checkpoints")
    reports_dir: Path = Path("reports")
    weights_cache_dir: Path | None = None  # None: the Hugging Face cache and ~/.cache/clip

    def __post_init__(self) -> None:
        self.checkpoints_dir = Path(self.checkpoints_dir)
        self.reports_dir = Path(self.reports_dir)
        if self.weights_cache_dir is not None:
            self.weights_cache_dir = Path(self.weights_cache_dir)

    def run_dir(self, run_id: str) -> Path:
        return self.checkpoints_dir / run_id

    @property
    def feature_cache(self) -> Path:
        return self.checkpoints_dir / "features"


@dataclass
class RunResult:
    config: RunConfig
    run_id: str
    run_dir: Path
    zero_shot_acc: float
    final_test_acc: float
    mean_norm: float
    position_norms: list[float]
    seconds: float
    reused: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class RunContext:
    """Model and data shared by the runs of one session (the demo trains several on the same split)."""

    loaded: LoadedModel
    dataset: DatasetSplits


def prepare(
    config: RunConfig,
    workspace: Workspace,
    data_root: Path | str | None = None,
    device: str | None = None,
    offline: bool = False,
    progress: bool = True,
) -> RunContext:
    resolved_device = resolve_device(device)
    config.resolved(resolved_device.type)  # bad precision/device combinations fail before any loading
    dataset = load_dataset(config.dataset, data_root)
    loaded = load_model(
        config.backbone,
        config.pretrained,
        device=resolved_device,
        precision=config.precision,
        checkpoints_dir=workspace.checkpoints_dir,
        cache_dir=workspace.weights_cache_dir,
        offline=offline,
        progress=progress,
    )
    return RunContext(loaded, dataset)


def accuracy(features: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of cosine classification; text_features (classes, embed)."""
    return top1_accuracy(features.to(text_features.device) @ text_features.T, labels)


def zero_shot_accuracy(ctx: RunContext, features: torch.Tensor, labels: torch.Tensor) -> float:
    template = ctx.dataset.template
    texts = [template.format(name.replace("_", " ")) for name in ctx.dataset.classnames]
    return accuracy(features, labels, ctx.loaded.encode_texts(texts))


class _TrainImages:
    """Few-shot training images, decoded once when small, with per-image seeded augmentation."""

    def __init__(self, dataset: DatasetSplits, samples: list[Sample], preprocess_cfg: dict):
        self.dataset, self.samples, self.preprocess_cfg = dataset, samples, preprocess_cfg
        self.cache = [dataset.load_image(s.source) for s in samples] if len(samples) <= IN_MEMORY_LIMIT else None
        self.labels = torch.tensor([s.label for s in samples])

    def batch(self, indices: list[int], seeds: list[int]) -> torch.Tensor:
        images = []
        for index, seed in zip(indices, seeds):
            image = self.cache[index] if self.cache is not None else self.dataset.load_image(self.samples[index].source)
            generator = torch.Generator().manual_seed(seed)
            images.append(augment_image(image, self.preprocess_cfg, self.dataset.augmentation, generator))
        return torch.stack(images)  # (batch, 3, H, W)


def _norm_row_values(ctx: torch.Tensor) -> dict[str, list[float]]:
    with torch.no_grad():
        return {column: nemesis.position_norms(ctx, kind).tolist() for column, kind in NORM_COLUMNS.items()}


def _check_finite(value: float, what: str, epoch: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{what} became {value} at epoch {epoch}; the last good checkpoint is kept: lower --lr or --alpha"
        )


# ------------------------------------------------------------------------------------------ checkpoints

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
RESULT_JSON = "result.json"


def _save_state(run_dir: Path, learner: PromptLearner, optimizer, epoch: int, rows: list[dict]) -> None:
    tensors = {"ctx": learner.ctx.detach().cpu().contiguous()}
    momentum = optimizer.state.get(learner.ctx, {}).get("momentum_buffer")
    if momentum is not None:
        tensors["momentum"] = momentum.detach().cpu().contiguous()
    tmp = run_dir / f".{STATE_TENSORS}.tmp"
    save_file(tensors, str(tmp), metadata={"epoch": str(epoch)})
    tmp_json = run_dir / f".{STATE_JSON}.tmp"
    tmp_json.write_text(json.dumps({"epoch": epoch, "rows": rows}))
    # Two renames cannot be one atomic step: both files name their epoch, and a pair that disagrees
    # (a kill between the renames) is not resumed from.
    tmp.replace(run_dir / STATE_TENSORS)
    tmp_json.replace(run_dir / STATE_JSON)


def _load_state(run_dir: Path, learner: PromptLearner, optimizer) -> tuple[int, list[dict]]:
    """Restore the last saved epoch; returns (next epoch, rows so far)."""
    state_json, state_tensors = run_dir / STATE_JSON, run_dir / STATE_TENSORS
    if not state_json.is_file() or not state_tensors.is_file():
        return 0, []
    state = json.loads(state_json.read_text())
    with safe_open(str(state_tensors), framework="pt") as handle:
        tensor_epoch = (handle.metadata() or {}).get("epoch")
    if tensor_epoch != str(state["epoch"]):
        logger.warning("%s: saved state is incomplete (interrupted while saving); training from the start", run_dir.name)
        return 0, []
    tensors = load_file(str(state_tensors))
    if tensors["ctx"].shape != learner.ctx.shape:
        return 0, []
    with torch.no_grad():
        learner.ctx.copy_(tensors["ctx"])
    if "momentum" in tensors:
        optimizer.state[learner.ctx]["momentum_buffer"] = tensors["momentum"].to(learner.ctx.device)
    logger.info("resuming %s after epoch %d", run_dir.name, state["epoch"])
    return state["epoch"] + 1, state["rows"]


def _finished(workspace: Workspace, config: RunConfig) -> RunResult | None:
    path = workspace.run_dir(config.run_id) / RESULT_JSON
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    _ensure_reported(workspace, config.run_id)
    return RunResult(
        config=config,
        run_id=config.run_id,
        run_dir=workspace.run_dir(config.run_id),
        zero_shot_acc=data["zero_shot_acc"],
        final_test_acc=data["final_test_acc"],
        mean_norm=data["mean_norm"],
        position_norms=data["position_norms"],
        seconds=data["seconds"],
        reused=True,
    )


def _ensure_reported(workspace: Workspace, run_id: str) -> None:
    """Re-append a finished run's rows when the reports folder was cleared or is a new one."""
    run_dir = workspace.run_dir(run_id)
    for table in ("runs", "trajectories"):
        if not store.existing_keys(workspace.reports_dir, table, run_id):
            saved = run_dir / f"{table}.parquet"
            if saved.is_file():
                store.append_rows(workspace.reports_dir, table, pd.read_parquet(saved))


# ------------------------------------------------------------------------------------------- training


def train_prompt(
    config: RunConfig,
    workspace: Workspace | None = None,
    context: RunContext | None = None,
    data_root: Path | str | None = None,
    device: str | None = None,
    offline: bool = False,
    force: bool = False,
    progress: bool = True,
    save_every: int = 10,
    stop_after_epoch: int | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> RunResult:
    """Train (or reuse, or resume) the run described by ``config``; returns its result.

    ``stop_after_epoch`` simulates an interruption (for tests): training stops after saving that epoch.
    """
    workspace = workspace or Workspace()
    context = context or prepare(config, workspace, data_root, device, offline, progress)
    loaded, dataset = context.loaded, context.dataset
    if not dataset.train:
        raise ConfigError(f"dataset {config.dataset} has no train split (test-only); train on its source dataset")
    train_samples, val_samples = sample_train_shots(dataset, config.shots, config.seed)  # before anything is written
    config = config.resolved(loaded.device.type)
    run_id = config.run_id
    run_dir = workspace.run_dir(run_id)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    elif (done := _finished(workspace, config)) is not None:
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True))
    started = time.perf_counter()

    save_split(run_dir / "split.json", {"train": train_samples, "val": val_samples}, dataset.classnames)
    test_features, test_labels = image_features(loaded, dataset, dataset.test, workspace.feature_cache, progress)
    zero_shot = zero_shot_accuracy(context, test_features, test_labels)

    learner = PromptLearner(loaded, dataset.classnames, config.prompt, seed=config.seed)
    optimizer = torch.optim.SGD(
        [learner.ctx], lr=config.optim.lr, momentum=config.optim.momentum, weight_decay=config.optim.weight_decay
    )
    start_epoch, rows = _load_state(run_dir, learner, optimizer)
    images = _TrainImages(dataset, train_samples, loaded.preprocess_cfg)
    identity = config.identity_columns()
    identity["n_ctx"] = learner.n_ctx
    num_epochs, batch_size = config.num_epochs, config.optim.batch_size
    steps_per_epoch = math.ceil(len(train_samples) / batch_size)  # the last, smaller batch is kept
    spec = config.nemesis
    logit_scale = loaded.logit_scale
    test_features_device = test_features.to(loaded.device)

    label = f"{config.method} {config.dataset} {config.shots}-shot seed {config.seed}"
    with progress_bar(label, total=num_epochs, enabled=progress) as advance:
        advance(start_epoch)
        for epoch in range(start_epoch, num_epochs):
            lr = lr_at_epoch(epoch, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            omega_value = nemesis.omega(epoch, num_epochs, spec.omega.value) if spec.enabled else 0.0
            generator = epoch_generator(config.seed, epoch)
            order = torch.randperm(len(train_samples), generator=generator).tolist()
            seeds = torch.randint(0, 2**62, (len(train_samples),), generator=generator).tolist()
            sums = {"loss": 0.0, "ce": 0.0, "norm": 0.0}
            alpha_hits = torch.zeros(learner.n_ctx)
            for step in range(steps_per_epoch):
                batch = order[step * batch_size : (step + 1) * batch_size]
                pixels = images.batch(batch, [seeds[i] for i in batch])
                labels = images.labels[batch].to(loaded.device)
                features = loaded.encode_images(pixels)  # (batch, embed), frozen tower
                text = learner.text_features()[0]  # (classes, embed)
                logits = logit_scale * features @ text.T  # (batch, classes)
                ce = F.cross_entropy(logits, labels)
                norm_loss = torch.zeros((), device=ce.device)
                if spec.enabled:
                    norm_loss, hits = _nemesis_term(learner, features, labels, logits, spec, omega_value, generator)
                    alpha_hits += hits
                loss = ce + norm_loss
                loss_value = float(loss.detach())
                _check_finite(loss_value, "the training loss", epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["loss"] += loss_value * len(batch)
                sums["ce"] += float(ce.detach()) * len(batch)
                sums["norm"] += float(norm_loss.detach()) * len(batch)

            with torch.no_grad():
                test_acc = accuracy(test_features_device, test_labels, learner.text_features()[0])
            norms = _norm_row_values(learner.ctx)
            for value in norms["norm"]:
                _check_finite(value, "a context norm", epoch)
            count = len(train_samples)
            for position in range(learner.n_ctx):
                rows.append(
                    {
                        **identity,
                        "epoch": epoch,
                        "position": position,
                        **{column: values[position] for column, values in norms.items()},
                        "test_acc": test_acc,
                        "train_loss": sums["loss"] / count,
                        "ce_loss": sums["ce"] / count,
                        "norm_loss": sums["norm"] / count,
                        "omega": omega_value,
                        "alpha": float(alpha_hits[position]) / steps_per_epoch if spec.uses_pan else float("nan"),
                        "lr": lr,
                    }
                )
            if (epoch + 1) % save_every == 0 or epoch + 1 == num_epochs or epoch == stop_after_epoch:
                _save_state(run_dir, learner, optimizer, epoch, rows)
            advance(1, acc=test_acc, loss=sums["loss"] / count)
            if on_epoch is not None:
                on_epoch(epoch, {"test_acc": test_acc, "norms": norms["norm"]})
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch + 1 < num_epochs:
                raise KeyboardInterrupt(f"stopped after epoch {epoch}")

    final_norms = rows[-learner.n_ctx :]
    position_norms = [row["norm"] for row in final_norms]
    final_acc = final_norms[0]["test_acc"]
    seconds = time.perf_counter() - started
    mean_norm = sum(position_norms) / len(position_norms)
    save_prompt(
        run_dir,
        learner.ctx,
        learner_metadata(learner, {"run_id": run_id, "dataset": config.dataset, "config": config.to_dict()}),
    )
    run_row = {
        **config.config_columns(),
        "n_ctx": learner.n_ctx,
        "final_test_acc": final_acc,
        "zero_shot_acc": zero_shot,
        "mean_norm": mean_norm,
        "checkpoint": str(run_dir),
        "seconds": seconds,
    }
    pd.DataFrame(rows).to_parquet(run_dir / "trajectories.parquet", index=False)
    pd.DataFrame([run_row]).to_parquet(run_dir / "runs.parquet", index=False)
    result = {
        "zero_shot_acc": zero_shot,
        "final_test_acc": final_acc,
        "mean_norm": mean_norm,
        "position_norms": position_norms,
        "seconds": seconds,
    }
    tmp = run_dir / f".{RESULT_JSON}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(run_dir / RESULT_JSON)
    _ensure_reported(workspace, run_id)
    return RunResult(config, run_id, run_dir, zero_shot, final_acc, mean_norm, position_norms, seconds)


def _nemesis_term(
    learner: PromptLearner,
    features: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    spec,
    omega_value: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """omega * (beta * L_pun + (1 - beta) * L_pan); also which positions PAN marked (n_ctx,)."""
    ctx = learner.ctx
    norm_type = spec.norm_type.value
    zero = torch.zeros((), device=ctx.device)
    hits = torch.zeros(learner.n_ctx)
    pun = nemesis.pun_loss(ctx, spec.weight, norm_type) if spec.beta > 0 else zero
    pan = zero
    if spec.uses_pan:
        positions = nemesis.choose_pan_positions(learner.n_ctx, spec.pan_positions, generator)
        with torch.no_grad():
            # Pre-inference reuses this step's image features; all NP variants in one text pass.
            variants = nemesis.rescale_positions_variants(ctx.detach(), positions.to(ctx.device), spec.pan_factor)
            text = learner.text_features(variants)  # (NP, classes, embed)
            rescaled_logits = torch.einsum("be,pce->pbc", features, text)  # (NP, batch, classes)
            correct_rescaled = (rescaled_logits.argmax(-1) == labels[None]).sum(-1)  # (NP,)
            correct_base = (logits.argmax(-1) == labels).sum()
            alpha = nemesis.pan_alpha(correct_base, correct_rescaled, spec.weight)
        pan = nemesis.pan_loss(ctx, positions.to(ctx.device), alpha.to(ctx.device), norm_type)
        hits[positions[alpha.cpu() > 0]] += 1
    return nemesis.nemesis_loss(pun, pan, spec.beta, omega_value), hits
