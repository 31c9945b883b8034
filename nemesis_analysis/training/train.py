"""The training loop of a prompt method: CoOp, and CoOp + Nemesis (PUN, PAN, or their beta mix).

One run is a pure function of its :class:`RunConfig`. Test-split image features are encoded once and
reused every epoch. Each epoch draws its shuffling, augmentation and PAN positions from a generator
seeded by (seed, epoch), and the learning rate is a function of the epoch, so a run resumed from its
last saved epoch produces exactly the rows of an uninterrupted one. An epoch's batches follow
:func:`steps_per_epoch`: ours keep the last smaller batch, ``optim.drop_last`` is the reference loader's rule.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from nemesis_analysis.training import nemesis
from nemesis_analysis import protocols
from nemesis_analysis.storage import store
from nemesis_analysis.choices import Precision
from nemesis_analysis.clip.augment import augment_image
from nemesis_analysis.clip.encoding import fp32_text_passes
from nemesis_analysis.config import NemesisConfig, OptimConfig, RunConfig
from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.devices import host_features, resolve_run_config
from nemesis_analysis.data.fewshot import sample_train_shots
from nemesis_analysis.errors import ConfigError, TrainingDiverged
from nemesis_analysis.evaluate import write_run_evaluations
from nemesis_analysis.clip.features import image_features, local_image_features
from nemesis_analysis.methods import build_method_for_run
from nemesis_analysis.methods.base import PromptMethod
from nemesis_analysis.metrics import top1_accuracy
from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.progress import progress_bar
from nemesis_analysis.storage.rundir import SUPERSEDED_TABLES, RunDir
from nemesis_analysis.session import Session

logger = logging.getLogger(__name__)

NORM_COLUMNS = {"norm": "l2", "norm_l1": "l1", "norm_inf": "inf"}
IN_MEMORY_LIMIT = 4096  # few-shot train sets up to this size are decoded once and kept in memory
SAVE_EVERY = 10  # epochs between resume states (and always the last one)


def lr_at_epoch(epoch: int, config: RunConfig) -> float:
    """CoOp's schedule: ``warmup_lr`` for the warm-up epochs, then cosine from ``lr`` over the epochs."""
    optim = config.optim
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    return 0.5 * optim.lr * (1 + math.cos(math.pi * (epoch - optim.warmup_epochs) / config.num_epochs))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + epoch)


def steps_per_epoch(n_images: int, batch_size: int, drop_last: bool) -> int:
    """SGD steps of one epoch. Ours (``drop_last=False``): ``ceil(n / batch)``, the last smaller batch kept.
    The reference loader's rule (``drop_last=True``): ``floor(n / batch)`` when the set holds at least one
    batch, and the one smaller batch only when the whole set is smaller than a batch."""
    if drop_last and n_images >= batch_size:
        return n_images // batch_size
    return math.ceil(n_images / batch_size)


def build_optimizer(parameters: list[torch.Tensor], optim: OptimConfig) -> torch.optim.Optimizer:
    """CoOp's SGD (momentum, weight decay) on the method's trainable tensors; it updates them in their own dtype."""
    return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


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
    stopped: bool = False  # should_stop ended training before the last epoch (nothing reported)


class TrainImages:
    """Few-shot training images, decoded once when small, with per-image seeded augmentation."""

    def __init__(self, dataset: DatasetSplits, samples: list[Sample], preprocess_cfg: dict):
        self.dataset, self.samples, self.preprocess_cfg = dataset, samples, preprocess_cfg
        self.cache = [dataset.load_image(s.source) for s in samples] if len(samples) <= IN_MEMORY_LIMIT else None
        self.labels = torch.tensor([s.label for s in samples])

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: list[int], seeds: list[int]) -> torch.Tensor:
        images = []
        for index, seed in zip(indices, seeds):
            image = self.cache[index] if self.cache is not None else self.dataset.load_image(self.samples[index].source)
            generator = torch.Generator().manual_seed(seed)
            images.append(augment_image(image, self.preprocess_cfg, self.dataset.augmentation, generator))
        return torch.stack(images)  # (batch, 3, H, W)


@dataclass
class TrainingRun:
    """Everything one run's epochs share: the method, its optimiser, the data and the rows so far."""

    config: RunConfig  # resolved
    loaded: LoadedModel
    method: PromptMethod
    optimizer: torch.optim.Optimizer
    images: TrainImages
    test_features: torch.Tensor  # (n_test, embed) on the model's device
    test_labels: torch.Tensor  # (n_test,)
    zero_shot_acc: float
    run_dir: RunDir
    rows: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    on_step: Callable[["StepRecord"], None] | None = None  # called after every SGD step
    test_local: torch.Tensor | None = None  # (n_test, locations, embed) on the host, when the method scores them


@dataclass
class StepRecord:
    """One training step as it happened (tensors detached, on CPU), given to ``on_step`` callbacks."""

    epoch: int
    lr: float
    omega: float
    features: torch.Tensor  # (batch, embed) image features of the augmented batch
    labels: torch.Tensor  # (batch,)
    logits: torch.Tensor  # (batch, classes)
    ce: float
    pun: float  # A * mean_i ||p_i||_q before beta and omega (0 without PUN)
    pan: float  # sum_j alpha_j ||p_j||_q / max(1, #nonzero alpha) (0 without PAN)
    norm_loss: float  # omega * (beta * pun + (1 - beta) * pan)
    loss: float
    positions: torch.Tensor | None  # (NP,) PAN's positions this step; None without PAN
    alpha: torch.Tensor | None  # (NP,)
    correct_base: int | None  # the batch's correct count without rescaling
    correct_rescaled: torch.Tensor | None  # (NP,) with each chosen position rescaled alone
    slot_before: torch.Tensor  # the position slot before the update
    grad: torch.Tensor  # its gradient
    slot_after: torch.Tensor  # after the update


@dataclass
class NemesisTerm:
    """The Nemesis part of one step's loss, and PAN's decisions (None without PAN)."""

    loss: torch.Tensor  # omega * (beta * pun + (1 - beta) * pan)
    pun: torch.Tensor
    pan: torch.Tensor
    hits: torch.Tensor  # (n_positions,) positions PAN marked
    positions: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    correct_base: int | None = None
    correct_rescaled: torch.Tensor | None = None


@dataclass
class EpochStats:
    """Per-sample means of one epoch's losses, and how often PAN marked each position."""

    train_loss: float
    ce_loss: float
    norm_loss: float
    omega: float
    alpha: list[float]  # per position; NaN without PAN
    lr: float


# ------------------------------------------------------------------------------------------- the run


def train_prompt(
    config: RunConfig,
    session: Session,
    *,
    force: bool = False,
    on_epoch: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    save_every: int = SAVE_EVERY,
    on_step: Callable[[StepRecord], None] | None = None,
) -> RunResult:
    """Train (or reuse, or resume) the run described by ``config``; returns its result.

    ``on_epoch(epoch, {"test_acc", "norms"})`` is called after every epoch; ``should_stop(epoch)``, asked
    after each epoch, returning True saves that epoch's state and ends training (a later call resumes after
    it) with ``stopped=True``. ``save_every``: epochs between resume states (the last epoch is always saved).
    ``on_step(record)`` receives a :class:`StepRecord` after every SGD step. The run is locked while it
    trains: a second process on the same run waits, then reuses it.
    """
    session.check_output_folders()  # before any model is loaded (or the tiny CLIP pretrained)
    protocols.check_protocol(config.protocol, config.dataset, config.prompt.csc)
    loaded, dataset = load_model_and_data(config, session)
    if not dataset.train:
        raise ConfigError(f"dataset {config.dataset} has no train split (test-only); train on its source dataset")
    samples = sample_train_shots(dataset, config.shots, config.seed, config.allow_missing_classes)
    dataset, samples = protocols.training_view(config.protocol, dataset, samples)  # base2new: base classes only
    config = resolve_run_config(config, loaded.device).with_dataset_fingerprint(dataset.fingerprint)
    run_dir = session.run_dir(config.run_id)
    with run_dir.lock():  # a second process on the same run waits here, then reuses the finished run
        if force:
            supersede_run(session, run_dir)
        elif (done := finished_result(session, config)) is not None:
            return with_protocol_evaluations(done, session, loaded)
        run_dir.save_config(config.to_dict())
        started = time.perf_counter()
        run = start_run(config, session, loaded, dataset, run_dir, samples)
        run.on_step = on_step
        if run_epochs(run, session, on_epoch, should_stop, save_every):
            return result_of(run, time.perf_counter() - started, stopped=True)
        result = finish_run(run, session, time.perf_counter() - started)
    return with_protocol_evaluations(result, session, loaded)


def run_epochs(run: TrainingRun, session: Session, on_epoch, should_stop, save_every: int) -> bool:
    """Train the remaining epochs; True when ``should_stop`` ended them early (the last epoch run is saved)."""
    config = run.config
    label = f"{config.prompt_method} {config.regularizer} {config.dataset} {config.shots}-shot seed {config.seed}"
    with progress_bar(label, total=config.num_epochs, enabled=session.progress) as advance:
        advance(run.start_epoch)
        for epoch in range(run.start_epoch, config.num_epochs):
            test_acc, norms = run_epoch(run, epoch, save=(epoch + 1) % save_every == 0)
            advance(1, acc=test_acc, loss=run.rows[-1]["train_loss"])
            if on_epoch is not None:
                on_epoch(epoch, {"test_acc": test_acc, "norms": norms})
            if should_stop is not None and epoch + 1 < config.num_epochs and should_stop(epoch):
                if (epoch + 1) % save_every:
                    save_state(run, epoch)
                return True
    return False


def supersede_run(session: Session, run_dir: RunDir) -> None:
    """``--force``: remove the run's rows from every table (corruptions of the old prompt included), then
    its files; a retrain interrupted after this resumes as a new run."""
    store.supersede_run(session.reports_dir, run_dir.run_id, SUPERSEDED_TABLES)
    run_dir.reset()


def load_model_and_data(config: RunConfig, session: Session) -> tuple[LoadedModel, DatasetSplits]:
    """The session's model and dataset for ``config``; bad precision/device pairs fail before any loading."""
    config = resolve_run_config(config, session.torch_device())
    dataset = session.dataset(config.dataset)
    return session.model(config.backbone, config.pretrained, config.precision), dataset


def start_run(
    config: RunConfig,
    session: Session,
    loaded: LoadedModel,
    dataset: DatasetSplits,
    run_dir: RunDir,
    samples: tuple[list[Sample], list[Sample]],
) -> TrainingRun:
    """Save the few-shot split, encode the test split, build the method and restore a saved epoch."""
    train_samples, val_samples = samples
    run_dir.save_split({"train": train_samples, "val": val_samples}, dataset.classnames)
    test_features, test_labels = image_features(loaded, dataset, dataset.test, session.feature_cache, session.progress)
    zero_shot = zero_shot_accuracy(loaded, dataset, test_features, test_labels)
    method = build_method_for_run(config, loaded, dataset.classnames)
    optimizer = build_optimizer(list(method.trainable().values()), config.optim)
    run = TrainingRun(config, loaded, method, optimizer, TrainImages(dataset, train_samples, loaded.preprocess_cfg),
                      test_features.to(loaded.device), test_labels, zero_shot, run_dir)  # fmt: skip
    if method.needs_local_features:
        test_local, _ = local_image_features(loaded, dataset, dataset.test, session.feature_cache, session.progress)
        run.test_local = host_features(test_local, loaded.device)  # scoring moves chunks (PLOT)
    if method.encodes_images:  # its image features depend on the prompt: it scores the test images
        run.test_features = method.image_inputs(dataset, dataset.test, session.feature_cache, session.progress)[0]
    restore_state(run)
    return run


def run_epoch(run: TrainingRun, epoch: int, save: bool) -> tuple[float, list[float]]:
    """Train one epoch, evaluate, append its trajectory rows and save the state when asked (or last)."""
    stats = train_one_epoch(run, epoch)
    test_acc = evaluate(run.method, run.test_features, run.test_labels, run.test_local)
    norms = norm_values(run.method.position_tensor())
    for value in norms["norm"]:
        check_finite(value, "a context norm", epoch)
    run.rows.extend(trajectory_rows(run, epoch, test_acc, norms, stats))
    if save or epoch + 1 == run.config.num_epochs:
        save_state(run, epoch)
    return test_acc, norms["norm"]


# ---------------------------------------------------------------------------------------- one epoch


def train_one_epoch(run: TrainingRun, epoch: int) -> EpochStats:
    """One pass over the few-shot images in seeded order, with seeded augmentation and PAN draws."""
    config, method, images = run.config, run.method, run.images
    lr = lr_at_epoch(epoch, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    spec = config.nemesis
    omega_value = nemesis.omega(epoch, config.num_epochs, spec.omega.value) if spec.enabled else 0.0
    generator = epoch_generator(config.seed, epoch)
    order = torch.randperm(len(images), generator=generator).tolist()
    seeds = torch.randint(0, 2**62, (len(images),), generator=generator).tolist()
    batch_size = config.optim.batch_size
    steps = steps_per_epoch(len(images), batch_size, config.optim.drop_last)
    sums = torch.zeros(3, dtype=torch.float64, device=run.loaded.device)  # loss, ce, norm: read once per epoch
    alpha_hits = torch.zeros(method.n_positions)
    for step in range(steps):
        batch = order[step * batch_size : (step + 1) * batch_size]
        losses, hits = train_step(run, images.batch(batch, [seeds[i] for i in batch]), images.labels[batch],
                                  omega_value, generator, epoch)  # fmt: skip
        alpha_hits += hits
        sums += torch.stack([losses["loss"], losses["ce"], losses["norm"]]).double() * len(batch)
    loss_sum, ce_sum, norm_sum = sums.tolist()  # the epoch's one host sync for its losses
    check_finite(loss_sum, "the training loss", epoch)
    count = min(len(images), steps * batch_size)  # images this epoch trained on
    alpha = [float(h) / steps if spec.uses_pan else float("nan") for h in alpha_hits]
    return EpochStats(loss_sum / count, ce_sum / count, norm_sum / count, omega_value, alpha, lr)


def train_step(
    run: TrainingRun,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    omega_value: float,
    generator: torch.Generator,
    epoch: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One SGD step on CE + the method's extra loss + the Nemesis term; returns the losses (detached tensors,
    read at the epoch's end: no host sync per step) and PAN's marks."""
    method, spec = run.method, run.config.nemesis
    labels = labels.to(run.loaded.device)
    # (batch, embed) from the frozen tower, plus (batch, locations, embed) for methods that score local
    # features; the images themselves for a method that prompts the image tower (MaPLe)
    features, local = method.encode_batch(pixels)
    logits = method.logits(features, local)  # (batch, classes)
    ce = F.cross_entropy(logits, labels)
    extra = method.extra_loss(features, labels, logits)  # zero for CoOp (KgCoOp adds one)
    zero = torch.zeros((), device=ce.device)
    term = NemesisTerm(zero, zero, zero, torch.zeros(method.n_positions))
    if spec.enabled:
        term = nemesis_term(method, features, labels, logits, spec, omega_value, generator, local)
    loss = ce + extra + term.loss
    before = None
    if run.on_step is not None:
        check_finite(float(loss.detach()), "the training loss", epoch)  # recorded steps stop at once
        before = method.position_tensor().detach().cpu().clone()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.on_step is not None:
        record = step_record(run, epoch, omega_value, features, labels, logits, ce, term, float(loss.detach()), before)
        run.on_step(record)
    return {"loss": loss.detach(), "ce": ce.detach(), "norm": term.loss.detach()}, term.hits


def step_record(
    run: TrainingRun,
    epoch: int,
    omega_value: float,
    features: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor,
    term: NemesisTerm,
    loss_value: float,
    before: torch.Tensor,
) -> StepRecord:
    """The :class:`StepRecord` of the step just taken (the slot's gradient is still in place)."""
    slot = run.method.position_tensor()

    def cpu(value):
        return None if value is None else value.detach().cpu().clone()

    return StepRecord(
        epoch=epoch, lr=float(run.optimizer.param_groups[0]["lr"]), omega=omega_value, features=cpu(features),
        labels=cpu(labels), logits=cpu(logits), ce=float(ce.detach()), pun=float(term.pun.detach()),
        pan=float(term.pan.detach()), norm_loss=float(term.loss.detach()), loss=loss_value,
        positions=cpu(term.positions), alpha=cpu(term.alpha), correct_base=term.correct_base,
        correct_rescaled=cpu(term.correct_rescaled), slot_before=before, grad=cpu(slot.grad), slot_after=cpu(slot),
    )  # fmt: skip


def nemesis_term(
    method: PromptMethod,
    features: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    spec: NemesisConfig,
    omega_value: float,
    generator: torch.Generator,
    local: torch.Tensor | None = None,
) -> NemesisTerm:
    """omega * (beta * L_pun + (1 - beta) * L_pan) on the method's position slot, with PAN's decisions.

    PUN weighs with ``spec.weight``, PAN's alpha with ``spec.pan_alpha_weight``; class-specific norms are
    reduced over classes by ``spec.csc_reduction``."""
    slot = method.position_tensor()
    norm_type, reduction = spec.norm_type.value, spec.csc_reduction.value
    zero = torch.zeros((), device=slot.device)
    pun = nemesis.pun_loss(slot, spec.weight, norm_type, reduction) if spec.beta > 0 else zero
    term = NemesisTerm(zero, pun, zero, torch.zeros(method.n_positions))
    if spec.uses_pan:
        positions = nemesis.choose_pan_positions(method.n_positions, spec.pan_positions, generator)
        correct_base, correct_rescaled = pan_counts(method, slot, positions, spec.pan_factor, features, labels,
                                                    logits, local)  # fmt: skip
        alpha = nemesis.pan_alpha(correct_base, correct_rescaled, spec.pan_alpha_weight)
        term.pan = nemesis.pan_loss(slot, positions.to(slot.device), alpha.to(slot.device), norm_type, reduction)
        term.hits[positions[alpha.cpu() > 0]] += 1
        term.positions, term.alpha = positions, alpha
        term.correct_base, term.correct_rescaled = int(correct_base), correct_rescaled
    term.loss = nemesis.nemesis_loss(term.pun, term.pan, spec.beta, omega_value)
    return term


@torch.no_grad()
@fp32_text_passes()
def pan_counts(
    method: PromptMethod,
    slot: torch.Tensor,
    positions: torch.Tensor,
    factor: float,
    features: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    local: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PAN's pre-inference: the batch's correct count without rescaling, and ``(NP,)`` with each chosen
    position rescaled alone by ``factor``, from this step's image features; all NP variants in one text pass.

    Like with like: the counts come from fp32 text passes, and unless the training pass itself ran in fp32
    the unchanged slot joins the variants' pass (bf16 or fp16 would round the differently shaped training
    pass and the variants' pass apart, so an identity rescale could change a count)."""
    variants = nemesis.rescale_positions_variants(slot.detach(), positions.to(slot.device), factor)
    same_pass = method.loaded.precision != Precision.FP32
    if same_pass:
        variants = torch.cat([slot.detach()[None].to(variants.dtype), variants])
    scores = method.variant_scores(variants, features, local)  # ([1 +] NP, batch, classes)
    correct = (scores.argmax(-1) == labels[None]).sum(-1)  # ([1 +] NP,)
    if same_pass:
        return correct[0], correct[1:]
    return (logits.argmax(-1) == labels).sum(), correct


def evaluate(
    method: PromptMethod, features: torch.Tensor, labels: torch.Tensor, local: torch.Tensor | None = None
) -> float:
    """Top-1 test accuracy (percent) of the method's current prompt."""
    with torch.no_grad():
        return top1_accuracy(method.scores(features, local), labels)


def zero_shot_accuracy(
    loaded: LoadedModel, dataset: DatasetSplits, features: torch.Tensor, labels: torch.Tensor
) -> float:
    """Top-1 accuracy (percent) of the dataset's hand-crafted template."""
    texts = [dataset.template.format(name.replace("_", " ")) for name in dataset.classnames]
    text = loaded.encode_texts(texts)  # (classes, embed)
    return top1_accuracy(features.to(text.device) @ text.T, labels)


def norm_values(slot: torch.Tensor) -> dict[str, list[float]]:
    """Per-position norms of a slot for each trajectory norm column."""
    with torch.no_grad():
        return {column: nemesis.position_norms(slot, kind).tolist() for column, kind in NORM_COLUMNS.items()}


def check_finite(value: float, what: str, epoch: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{what} became {value} at epoch {epoch}; the last good checkpoint is kept: lower --lr or --alpha"
        )


def trajectory_rows(run: TrainingRun, epoch: int, test_acc: float, norms: dict, stats: EpochStats) -> list[dict]:
    """One ``trajectories`` row per position for this epoch."""
    identity = run.config.identity(n_ctx=run.method.n_ctx).as_row()
    pairs = run.method.position_pairs()  # flat position -> (prompt_index, position)
    layers = run.method.position_layers()  # flat position -> layer (MaPLe's deep prompts; 0 otherwise)
    return [
        {
            **identity,
            "epoch": epoch,
            "layer": layers[position],
            "prompt_index": pairs[position][0],
            "position": pairs[position][1],
            **{column: values[position] for column, values in norms.items()},
            "test_acc": test_acc,
            "train_loss": stats.train_loss,
            "ce_loss": stats.ce_loss,
            "norm_loss": stats.norm_loss,
            "omega": stats.omega,
            "alpha": stats.alpha[position],
            "lr": stats.lr,
        }
        for position in range(run.method.n_positions)
    ]


# ------------------------------------------------------------------------------------- state and end


def save_state(run: TrainingRun, epoch: int) -> None:
    """The trainable tensors and their SGD momentum after ``epoch``, with the rows so far."""
    tensors = {}
    for name, slot in run.method.trainable().items():
        tensors[name] = slot
        momentum = run.optimizer.state.get(slot, {}).get("momentum_buffer")
        if momentum is not None:
            tensors["momentum" if name == run.method.position_slot else f"momentum.{name}"] = momentum
    run.run_dir.save_state(epoch, run.rows, tensors)


def restore_state(run: TrainingRun) -> None:
    """Continue after the last saved epoch when its state fits the method; else start from epoch 0."""
    state = run.run_dir.load_state()
    slots = run.method.trainable()
    if state is None:
        return
    if any(state.tensors.get(name) is None or state.tensors[name].shape != slot.shape for name, slot in slots.items()):
        logger.warning("resume state of %s does not fit the run's prompt; training from the start", run.run_dir.path)
        return
    with torch.no_grad():
        for name, slot in slots.items():
            slot.copy_(state.tensors[name])
            key = "momentum" if name == run.method.position_slot else f"momentum.{name}"
            if key in state.tensors:
                run.optimizer.state[slot]["momentum_buffer"] = state.tensors[key].to(slot.device)
    logger.info("resuming %s after epoch %d", run.run_dir.run_id, state.epoch)
    run.start_epoch, run.rows = state.epoch + 1, state.rows


def result_of(run: TrainingRun, seconds: float, stopped: bool = False) -> RunResult:
    last = run.rows[-run.method.n_positions :]
    position_norms = [row["norm"] for row in last]
    return RunResult(
        config=run.config,
        run_id=run.config.run_id,
        run_dir=run.run_dir.path,
        zero_shot_acc=run.zero_shot_acc,
        final_test_acc=last[0]["test_acc"],
        mean_norm=sum(position_norms) / len(position_norms),
        position_norms=position_norms,
        seconds=seconds,
        stopped=stopped,
    )


def finish_run(run: TrainingRun, session: Session, seconds: float) -> RunResult:
    """Save the artifact, the run's table rows and its result (last), then report the rows."""
    result = result_of(run, seconds)
    config = run.config
    run.method.save(run.run_dir.path, {"run_id": config.run_id, "dataset": config.dataset, "config": config.to_dict()})
    run_row = {
        **config.config_columns(),
        "n_ctx": run.method.n_ctx,
        "final_test_acc": result.final_test_acc,
        "zero_shot_acc": result.zero_shot_acc,
        "mean_norm": result.mean_norm,
        "checkpoint": str(run.run_dir.path),
        "seconds": seconds,
    }
    run.run_dir.save_tables(run_row, run.rows)
    run.run_dir.save_result(
        {"zero_shot_acc": result.zero_shot_acc, "final_test_acc": result.final_test_acc, "mean_norm": result.mean_norm,
         "position_norms": result.position_norms, "seconds": seconds}
    )  # fmt: skip
    run.run_dir.ensure_reported(session.reports_dir)
    return result


def with_protocol_evaluations(result: RunResult, session: Session, loaded: LoadedModel) -> RunResult:
    """The result with the evaluations its protocol asks for (none for fewshot) in ``extra["evaluations"]``,
    computed and recorded once (a reused run reads them back)."""
    result.extra["evaluations"] = write_run_evaluations(session, result.config, result.run_dir, loaded)
    return result


def finished_result(session: Session, config: RunConfig) -> RunResult | None:
    """The result of a finished run (its rows re-reported when needed), or None."""
    run_dir = session.run_dir(config.run_id)
    data = run_dir.load_result()
    if data is None:
        return None
    run_dir.ensure_reported(session.reports_dir)
    return RunResult(
        config=config,
        run_id=config.run_id,
        run_dir=run_dir.path,
        zero_shot_acc=data["zero_shot_acc"],
        final_test_acc=data["final_test_acc"],
        mean_norm=data["mean_norm"],
        position_norms=data["position_norms"],
        seconds=data["seconds"],
        reused=True,
    )
