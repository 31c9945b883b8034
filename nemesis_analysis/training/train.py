"""The training loop of a prompt method: CoOp, and CoOp + Nemesis (PUN, PAN, or their beta mix).

One run is a pure function of its :class:`RunConfig`. Test-split image features are encoded once and
reused every epoch. Each epoch draws its shuffling, augmentation and PAN positions from a generator
seeded by (seed, epoch), and the learning rate is a function of the epoch, so a run resumed from its
last saved epoch produces exactly the rows of an uninterrupted one. An epoch's batches follow
:func:`steps_per_epoch`: ours keep the last smaller batch, ``optim.drop_last`` is the reference loader's rule.
Sibling runs (the same data stream, :mod:`~nemesis_analysis.training.siblings`) train fused
(:func:`train_siblings`): each batch is augmented and encoded once, then each run takes its own step with
its own copy of the epoch generator; one run alone (:func:`train_prompt`) is a group of one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nemesis_analysis import protocols
from nemesis_analysis.choices import Precision
from nemesis_analysis.clip.augment import augment_image
from nemesis_analysis.clip.encoding import LoadedModel, fp32_text_passes
from nemesis_analysis.clip.features import image_features, local_image_features
from nemesis_analysis.config import NemesisConfig, OptimConfig, RunConfig
from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.data.fewshot import sample_train_shots
from nemesis_analysis.devices import host_features, resolve_run_config
from nemesis_analysis.errors import ConfigError, NemesisError, TrainingDiverged
from nemesis_analysis.evaluate import write_run_evaluations
from nemesis_analysis.methods import build_method_for_run
from nemesis_analysis.methods.base import PromptMethod
from nemesis_analysis.metrics import top1_accuracy
from nemesis_analysis.progress import progress_bar
from nemesis_analysis.session import Session
from nemesis_analysis.storage import store
from nemesis_analysis.storage.rundir import SUPERSEDED_TABLES, RunDir
from nemesis_analysis.training import nemesis
from nemesis_analysis.training.siblings import check_siblings

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
    on_step: Callable[[StepRecord], None] | None = None  # called after every SGD step
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


@dataclass
class Hooks:
    """What the caller hears and decides while runs train (see :func:`train_prompt`)."""

    on_epoch: Callable[[int, dict], None] | None = None
    should_stop: Callable[[int], bool] | None = None
    save_every: int = SAVE_EVERY
    on_step: Callable[[StepRecord], None] | None = None


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

    ``on_epoch(epoch, {"test_acc", "norms", "run_id"})`` is called after every epoch; ``should_stop(epoch)``,
    asked after each epoch, returning True saves that epoch's state and ends training (a later call resumes
    after it) with ``stopped=True``. ``save_every``: epochs between resume states (the last epoch is always
    saved). ``on_step(record)`` receives a :class:`StepRecord` after every SGD step. The run is locked while
    it trains: a second process on the same run waits, then reuses it. A group of one: :func:`train_siblings`.
    """
    hooks = Hooks(on_epoch, should_stop, save_every, on_step)
    outcome = train_siblings([config], session, force=force, hooks=hooks)[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def train_siblings(
    configs: list[RunConfig], session: Session, *, force: bool = False, hooks: Hooks | None = None
) -> list[RunResult | NemesisError]:
    """Train sibling runs (same data stream: :mod:`~nemesis_analysis.training.siblings`) fused, in one loop.

    Each step augments and encodes the batch once; then every sibling takes its own step on those features
    with its own optimizer, learning rate and PAN draws (from its own copy of the epoch generator), so each
    run's artifact, rows and run id equal what :func:`train_prompt` gives it alone. Finished runs are reused,
    interrupted ones resume from their own last saved epoch; ``hooks`` as in :func:`train_prompt`
    (``should_stop`` stops the whole group). Returns one outcome per config, in order: its
    :class:`RunResult`, or the error (e.g. :class:`TrainingDiverged`) that ended it while the others went on.
    A run's ``seconds`` is its share of the group's time.
    """
    hooks = hooks or Hooks()
    session.check_output_folders()  # before any model is loaded (or the tiny CLIP pretrained)
    for config in configs:
        protocols.check_protocol(config.protocol, config.dataset, config.prompt.csc)
    check_siblings([resolve_run_config(config, session.torch_device()) for config in configs])
    first = configs[0]
    loaded, dataset = load_model_and_data(first, session)
    if not dataset.train:
        raise ConfigError(f"dataset {first.dataset} has no train split (test-only); train on its source dataset")
    samples = sample_train_shots(dataset, first.shots, first.seed, first.allow_missing_classes)
    dataset, samples = protocols.training_view(first.protocol, dataset, samples)  # base2new: base classes only
    resolved = [resolve_run_config(c, loaded.device).with_dataset_fingerprint(dataset.fingerprint) for c in configs]
    unique = list({config.run_id: config for config in resolved}.values())
    with ExitStack() as locks:  # in run-id order, so that two overlapping groups never wait on each other
        for run_id in sorted(config.run_id for config in unique):
            locks.enter_context(session.run_dir(run_id).lock())
        outcomes = train_locked(unique, session, loaded, dataset, samples, force, hooks)
    for outcome in outcomes.values():
        if isinstance(outcome, RunResult) and not outcome.stopped:
            with_protocol_evaluations(outcome, session, loaded)
    return [outcomes[config.run_id] for config in resolved]


def train_locked(
    configs: list[RunConfig],
    session: Session,
    loaded: LoadedModel,
    dataset: DatasetSplits,
    samples: tuple[list[Sample], list[Sample]],
    force: bool,
    hooks: Hooks,
) -> dict[str, RunResult | NemesisError]:
    """The runs' outcomes by run id, their locks held: finished runs reused, the others trained together."""
    outcomes: dict[str, RunResult | NemesisError] = {}
    runs: list[TrainingRun] = []
    started = time.perf_counter()
    images = None  # decoded once for the group
    for config in configs:
        run_dir = session.run_dir(config.run_id)
        if force:
            supersede_run(session, run_dir)
        elif (done := finished_result(session, config)) is not None:
            outcomes[config.run_id] = done
            continue
        run_dir.save_config(config.to_dict())
        if images is None:
            images = TrainImages(dataset, samples[0], loaded.preprocess_cfg)
        run = start_run(config, session, loaded, dataset, run_dir, samples, images)
        run.on_step = hooks.on_step
        runs.append(run)
    if not runs:
        return outcomes
    group = SiblingGroup(runs)
    stopped = run_epochs(group, session, hooks)
    seconds = (time.perf_counter() - started) / len(runs)
    for run in runs:
        run_id = run.config.run_id
        if run_id in group.errors:
            outcomes[run_id] = group.errors[run_id]
        elif stopped:
            outcomes[run_id] = result_of(run, seconds, stopped=True)
        else:
            outcomes[run_id] = finish_run(run, session, seconds)
    return outcomes


@dataclass
class SiblingGroup:
    """Runs training together, and the errors that ended some of them (by run id)."""

    runs: list[TrainingRun]
    errors: dict[str, NemesisError] = field(default_factory=dict)

    def active(self, epoch: int) -> list[TrainingRun]:
        """The runs that train ``epoch``: resumed past it already, or ended by an error, they do not."""
        return [run for run in self.runs if run.start_epoch <= epoch and run.config.run_id not in self.errors]

    def label(self) -> str:
        config = self.runs[0].config
        methods = "+".join(dict.fromkeys(f"{r.config.prompt_method} {r.config.regularizer}" for r in self.runs))
        return f"{methods} {config.dataset} {config.shots}-shot seed {config.seed}"


def run_epochs(group: SiblingGroup, session: Session, hooks: Hooks) -> bool:
    """Train the remaining epochs; True when ``should_stop`` ended them early (the last epoch run is saved)."""
    num_epochs = group.runs[0].config.num_epochs
    start = min(run.start_epoch for run in group.runs)
    with progress_bar(group.label(), total=num_epochs, enabled=session.progress) as advance:
        advance(start)
        for epoch in range(start, num_epochs):
            active = group.active(epoch)
            done = run_epoch(group, active, epoch, save=(epoch + 1) % hooks.save_every == 0) if active else []
            advance(1, **({"acc": done[0][1], "loss": done[0][0].rows[-1]["train_loss"]} if done else {}))
            for run, test_acc, norms in done if hooks.on_epoch is not None else ():
                hooks.on_epoch(epoch, {"test_acc": test_acc, "norms": norms, "run_id": run.config.run_id})
            if hooks.should_stop is not None and epoch + 1 < num_epochs and hooks.should_stop(epoch):
                for run, _, _ in done:
                    if (epoch + 1) % hooks.save_every:
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
    images: TrainImages | None = None,
) -> TrainingRun:
    """Save the few-shot split, encode the test split, build the method and restore a saved epoch.
    ``images``: the group's decoded training images (built here when not given)."""
    train_samples, val_samples = samples
    run_dir.save_split({"train": train_samples, "val": val_samples}, dataset.classnames)
    test_features, test_labels = image_features(loaded, dataset, dataset.test, session.feature_cache, session.progress)
    zero_shot = zero_shot_accuracy(loaded, dataset, test_features, test_labels)
    method = build_method_for_run(config, loaded, dataset.classnames)
    optimizer = build_optimizer(list(method.trainable().values()), config.optim)
    images = images if images is not None else TrainImages(dataset, train_samples, loaded.preprocess_cfg)
    run = TrainingRun(config, loaded, method, optimizer, images, test_features.to(loaded.device), test_labels,
                      zero_shot, run_dir)  # fmt: skip
    if method.needs_local_features:
        test_local, _ = local_image_features(loaded, dataset, dataset.test, session.feature_cache, session.progress)
        run.test_local = host_features(test_local, loaded.device)  # scoring moves chunks (PLOT)
    if method.encodes_images:  # its image features depend on the prompt: it scores the test images
        run.test_features = method.image_inputs(dataset, dataset.test, session.feature_cache, session.progress)[0]
    restore_state(run)
    return run


def run_epoch(
    group: SiblingGroup, runs: list[TrainingRun], epoch: int, save: bool
) -> list[tuple[TrainingRun, float, list[float]]]:
    """Train one epoch of ``runs``, evaluate each, append its trajectory rows and save its state when asked
    (or last); returns (run, test accuracy, position norms) of each run that got through (errors in ``group``)."""
    stats = train_one_epoch(runs, epoch)
    done = []
    for run in runs:
        run_id = run.config.run_id
        try:
            if isinstance(stats[run_id], NemesisError):
                raise stats[run_id]
            test_acc = evaluate(run.method, run.test_features, run.test_labels, run.test_local)
            norms = norm_values(run.method.position_tensor())
            for value in norms["norm"]:
                check_finite(value, "a context norm", epoch)
        except NemesisError as error:
            group.errors[run_id] = error
            continue
        run.rows.extend(trajectory_rows(run, epoch, test_acc, norms, stats[run_id]))
        if save or epoch + 1 == run.config.num_epochs:
            save_state(run, epoch)
        done.append((run, test_acc, norms["norm"]))
    return done


# ---------------------------------------------------------------------------------------- one epoch


class EpochTrainer:
    """One run's part of an epoch: its learning rate and omega, its own copy of the epoch generator (PAN's
    draws continue from where the order and augmentation draws left it, as when the run trains alone), and
    its loss sums; an error ends its epoch without stopping its siblings'."""

    def __init__(self, run: TrainingRun, epoch: int, generator_state: torch.Tensor):
        self.run, self.epoch, config = run, epoch, run.config
        self.lr = lr_at_epoch(epoch, config)
        for group in run.optimizer.param_groups:
            group["lr"] = self.lr
        spec = config.nemesis
        self.omega = nemesis.omega(epoch, config.num_epochs, spec.omega.value) if spec.enabled else 0.0
        self.generator = torch.Generator()
        self.generator.set_state(generator_state)
        self.sums = torch.zeros(3, dtype=torch.float64, device=run.loaded.device)  # loss, ce, norm: read once
        self.alpha_hits = torch.zeros(run.method.n_positions)
        self.error: NemesisError | None = None

    def step(self, encoded: tuple[torch.Tensor, torch.Tensor | None], labels: torch.Tensor) -> None:
        if self.error is not None:
            return
        features, local = encoded
        try:
            losses, hits = member_step(self.run, features, local, labels, self.omega, self.generator, self.epoch)
        except NemesisError as error:
            self.error = error
            return
        self.alpha_hits += hits
        self.sums += torch.stack([losses["loss"], losses["ce"], losses["norm"]]).double() * len(labels)

    def result(self, count: int, steps: int) -> EpochStats | NemesisError:
        if self.error is not None:
            return self.error
        loss_sum, ce_sum, norm_sum = self.sums.tolist()  # the epoch's one host sync for its losses
        try:
            check_finite(loss_sum, "the training loss", self.epoch)
        except NemesisError as error:
            return error
        uses_pan = self.run.config.nemesis.uses_pan
        alpha = [float(h) / steps if uses_pan else float("nan") for h in self.alpha_hits]
        return EpochStats(loss_sum / count, ce_sum / count, norm_sum / count, self.omega, alpha, self.lr)


def train_one_epoch(runs: list[TrainingRun], epoch: int) -> dict[str, EpochStats | NemesisError]:
    """One pass of sibling runs over their few-shot images in seeded order, with seeded augmentation: each
    batch is augmented and encoded once for all of them, then each run takes its step (and PAN draws)."""
    config, images = runs[0].config, runs[0].images
    generator = epoch_generator(config.seed, epoch)
    order = torch.randperm(len(images), generator=generator).tolist()
    seeds = torch.randint(0, 2**62, (len(images),), generator=generator).tolist()
    trainers = [EpochTrainer(run, epoch, generator.get_state()) for run in runs]
    batch_size = config.optim.batch_size
    steps = steps_per_epoch(len(images), batch_size, config.optim.drop_last)
    for step in range(steps):
        batch = order[step * batch_size : (step + 1) * batch_size]
        pixels, labels = images.batch(batch, [seeds[i] for i in batch]), images.labels[batch]
        encoded: dict[bool, tuple] = {}  # one image-tower pass per kind of features the runs need
        for trainer in trainers:
            trainer.step(encode_batch(trainer.run.method, pixels, encoded), labels)
    count = min(len(images), steps * batch_size)  # images this epoch trained on
    return {trainer.run.config.run_id: trainer.result(count, steps) for trainer in trainers}


def encode_batch(
    method: PromptMethod, pixels: torch.Tensor, encoded: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What ``method.logits`` takes for a batch of pixels (:meth:`PromptMethod.encode_batch`): the frozen image
    tower's (features (batch, embed), local (batch, locations, embed) or None), computed once per kind and
    kept in ``encoded`` for the batch's other runs. A method that prompts the image tower (MaPLe) scores the
    pixels themselves, so nothing is shared for it."""
    if method.encodes_images:
        return method.encode_batch(pixels)
    encoded = {} if encoded is None else encoded
    kind = method.needs_local_features
    if kind not in encoded:
        encoded[kind] = method.encode_batch(pixels)  # frozen tower, one pass
    return encoded[kind]


def train_step(
    run: TrainingRun,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    omega_value: float,
    generator: torch.Generator,
    epoch: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One SGD step of one run on a batch of pixels: encode it, then :func:`member_step`."""
    features, local = encode_batch(run.method, pixels)
    return member_step(run, features, local, labels, omega_value, generator, epoch)


def member_step(
    run: TrainingRun,
    features: torch.Tensor,
    local: torch.Tensor | None,
    labels: torch.Tensor,
    omega_value: float,
    generator: torch.Generator,
    epoch: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One SGD step on CE + the method's extra loss + the Nemesis term, on the batch's image features
    (``local``: (batch, locations, embed) for methods that score local features); returns the losses and
    PAN's marks."""
    method, spec = run.method, run.config.nemesis
    labels = labels.to(run.loaded.device)
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
