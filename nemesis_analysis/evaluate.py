"""Evaluates a learned prompt on any dataset's test split (all, base or new classes) and records it in ``evaluations``.

Image features come from the feature cache of the *whole* test split (shared with training and the
corruption sweep); a class subset keeps its images and relabels them. Rows are appended under the
store's run claim and only for keys not yet in the table, so a rerun adds nothing.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nemesis_analysis import protocols
from nemesis_analysis.choices import EvalClasses, Protocol, choice, plain
from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.clip.features import image_features, image_pixels, local_image_features
from nemesis_analysis.config import PromptConfig, RunConfig
from nemesis_analysis.corruption.engine import accuracy_of, predict_variants
from nemesis_analysis.data.base import DatasetSplits
from nemesis_analysis.errors import ConfigError, NoDataError
from nemesis_analysis.methods import build_method_for_run
from nemesis_analysis.methods.base import PromptMethod, method_class
from nemesis_analysis.session import Session
from nemesis_analysis.storage import store
from nemesis_analysis.storage.artifacts import ARTIFACT_TENSORS, read_prompt

TABLE = "evaluations"


@dataclass(frozen=True)
class Evaluation:
    """One (eval_dataset, eval_classes) result of a learned prompt."""

    eval_dataset: str
    eval_classes: str
    acc: float  # top-1, percent
    n_test: int
    n_classes: int
    reused: bool = False  # read from the table instead of computed

    @property
    def key(self) -> tuple[str, str]:
        return (self.eval_dataset, self.eval_classes)


@dataclass
class LearnedPrompt:
    """A saved prompt with the identity of the run that learned it."""

    ctx: torch.Tensor  # (n_ctx, width) or (classes, n_ctx, width)
    prompt_config: PromptConfig
    classnames: list[str]  # the class names it was trained on
    identity: dict  # the run's identity columns
    protocol: Protocol
    path: Path
    config: RunConfig | None = None  # the run's config (which method, with which options); None: CoOp

    @property
    def csc(self) -> bool:
        return bool(self.prompt_config.csc)

    def method_for(self, loaded: LoadedModel, classnames: Sequence[str]) -> PromptMethod:
        """The run's own prompt method over ``classnames``, with every trained tensor loaded (CoCoOp's
        meta-network included), so evaluations score images exactly as the method does."""
        config = self.config or RunConfig(prompt=self.prompt_config)
        method = build_method_for_run(config, loaded, list(classnames))
        if set(method.trainable()) != {method.position_slot}:
            method.load(self.path)  # tensors besides the slot (CoCoOp's meta-network) come from the artifact
        with torch.no_grad():
            slot = method.slots()[method.position_slot]
            slot.copy_(self.ctx.reshape(slot.shape).to(slot))
        return method


# ------------------------------------------------------------------------------------------ pure math


def class_mask(labels: torch.Tensor, selected: Sequence[int]) -> torch.Tensor:
    """Which test rows have a label in ``selected`` (bool, one per row)."""
    chosen = {int(label) for label in selected}
    return torch.tensor([int(label) in chosen for label in labels.tolist()], dtype=torch.bool)


def restrict_to_classes(
    features: torch.Tensor, labels: torch.Tensor, selected: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test rows whose label is in ``selected``, and their labels renumbered from 0 in sorted order."""
    mapping = protocols.relabeler(selected)
    keep = class_mask(labels, selected)
    new_labels = torch.tensor([mapping[int(label)] for label in labels[keep].tolist()], dtype=torch.long)
    return features[keep], new_labels


def subset_accuracy(
    loaded: LoadedModel, prompt: LearnedPrompt, classnames: Sequence[str], features, labels, local=None
) -> float:
    """Top-1 accuracy (percent) of the run's method over ``classnames``, through the engine's batched
    prediction (``local``: the test images' local features, for methods that need them)."""
    method = prompt.method_for(loaded, classnames)
    slot = method.slots()[method.position_slot].detach()  # the trained slot, as the method holds it
    predictions = predict_variants(method, slot[None], features.to(method.device), local)  # (1, n)
    return float(accuracy_of(predictions, labels.cpu())[0])


def masked_accuracy(
    features: torch.Tensor, labels: torch.Tensor, parent_text: torch.Tensor, parent_indices: Sequence[int]
) -> float:
    """Accuracy over a class subset computed from the parent's logits (e.g. 1,000-way ImageNet) masked to it.

    ``labels`` are subset labels (0 .. len(parent_indices) - 1); ``parent_indices[k]`` is subset class
    k's column in the parent. Columns outside the subset are set to -inf before the argmax.
    """
    scores = features.to(parent_text.device) @ parent_text.T  # (n, parent classes)
    index = torch.tensor(list(parent_indices), device=scores.device)
    masked = torch.full_like(scores, float("-inf"))
    masked[:, index] = scores[:, index]
    lookup = torch.full((scores.shape[1],), -1, dtype=torch.long)
    lookup[index.cpu()] = torch.arange(len(index))
    predictions = lookup[masked.argmax(dim=1).cpu()]
    return 100.0 * float((predictions == labels.cpu()).double().mean())


# ------------------------------------------------------------------------------------------ prompts


def run_prompt_dir(checkpoints_dir: Path | str, run_id: str) -> Path:
    """The folder of a finished run's prompt, ``run_id`` being an id or a unique prefix of one; or a
    NoDataError (ConfigError for an ambiguous prefix) naming the fix."""
    checkpoints_dir = Path(checkpoints_dir)
    if not run_id:
        raise ConfigError("--run needs a run id (or a unique prefix of one); see the runs table")
    folders = sorted(checkpoints_dir.glob(f"{glob.escape(run_id)}*")) if checkpoints_dir.is_dir() else []
    finished = [f for f in folders if (f / ARTIFACT_TENSORS).is_file()]
    if len(finished) > 1:
        names = ", ".join(f.name for f in finished[:4])
        raise ConfigError(f"run id prefix {run_id!r} is ambiguous ({names}); give more characters")
    if finished:
        return finished[0]
    if folders:
        raise NoDataError(
            f"run {folders[0].name} in {checkpoints_dir} has no saved prompt yet (unfinished or stopped); "
            "finish it with the same `nemesis train` command"
        )
    raise NoDataError(
        f"no run {run_id!r} in {checkpoints_dir}; pass a run id from the runs table or the right --checkpoints"
    )


def load_learned_prompt(path: Path | str) -> LearnedPrompt:
    """Read a prompt artifact that records its run config (what ``nemesis train`` saves)."""
    path = Path(path).expanduser()
    saved = read_prompt(path)
    ctx, meta = saved.ctx, saved.metadata
    if "config" not in meta or "prompt" not in meta:
        raise ConfigError(f"{path} records no run config; evaluate prompts saved by `nemesis train`")
    config = RunConfig.from_dict(meta["config"])
    identity = config.identity(n_ctx=ctx.shape[-2]).as_row()
    identity["run_id"] = meta.get("run_id", identity["run_id"])
    return LearnedPrompt(
        ctx=ctx.float(),
        prompt_config=PromptConfig(**meta["prompt"]),
        classnames=list(meta.get("classnames", [])),
        identity=identity,
        protocol=config.protocol,
        path=path,
        config=config,
    )


# ------------------------------------------------------------------------------------------ evaluating


def evaluate_context(
    loaded: LoadedModel,
    prompt: LearnedPrompt,
    dataset: DatasetSplits,
    classes: EvalClasses | str,
    cache_dir: Path | None,
    progress: bool = True,
    name: str | None = None,
) -> Evaluation:
    """Accuracy of ``prompt``'s context on ``dataset``'s test split restricted to ``classes``, with their names.

    ``name``: the ``eval_dataset`` to record (default ``dataset.name``; the name it was loaded by).
    """
    classes = choice(EvalClasses, classes, "class subset")
    selected = protocols.selected_labels(range(dataset.num_classes), classes)
    names = [dataset.classnames[label] for label in selected]
    protocols.check_transfer(prompt.csc, prompt.classnames, names)
    if prompt.config is not None and method_class(prompt.config.prompt_method).encodes_images:  # MaPLe: the images
        all_features, all_labels = image_pixels(loaded, dataset, dataset.test, progress)
    else:
        all_features, all_labels = image_features(loaded, dataset, dataset.test, cache_dir, progress)
    features, labels = restrict_to_classes(all_features, all_labels, selected)
    if labels.numel() == 0:
        raise ConfigError(f"dataset {dataset.name} has no test images of its {classes.value} classes")
    local = None
    if (
        prompt.config is not None and method_class(prompt.config.prompt_method).needs_local_features
    ):  # PLOT scores local image features
        local = local_image_features(loaded, dataset, dataset.test, cache_dir, progress)[0]
        local = local[class_mask(all_labels, selected)]
    acc = subset_accuracy(loaded, prompt, names, features, labels, local)
    return Evaluation(name or dataset.name, classes.value, acc, int(labels.numel()), len(names))


def evaluate_masked(
    loaded: LoadedModel,
    prompt: LearnedPrompt,
    subset: DatasetSplits,
    parent: DatasetSplits,
    cache_dir: Path | None,
    progress: bool = True,
) -> Evaluation:
    """ImageNet-A/R the other way: the parent's (1,000-way) logits masked to ``subset``'s classes.

    Equals :func:`evaluate_context` on ``subset`` (its own class list) for generic context: a class's text
    feature does not depend on the other classes.
    """
    protocols.check_transfer(prompt.csc, prompt.classnames, parent.classnames)
    features, labels = image_features(loaded, subset, subset.test, cache_dir, progress)
    indices = protocols.subsequence_indices(subset.classnames, parent.classnames)
    if prompt.config is not None and prompt.config.prompt_method != "coop":
        raise ConfigError(
            "masked 1,000-way evaluation is for CoOp prompts; evaluate other methods on the subset's own classes"
        )
    method = prompt.method_for(loaded, parent.classnames)
    with torch.no_grad():
        text = method.text_features(prompt.ctx[None].to(method.device))[0]  # (parent classes, embed)
        acc = masked_accuracy(features.to(method.device), labels, text, indices)
    return Evaluation(subset.name, EvalClasses.ALL.value, acc, int(labels.numel()), len(indices))


def evaluation_row(identity: dict, protocol: Protocol | str, evaluation: Evaluation) -> dict:
    """One ``evaluations`` row: the trained run's identity columns plus the protocol and the result."""
    return {
        **identity,
        "protocol": plain(choice(Protocol, protocol, "protocol")),
        "eval_dataset": evaluation.eval_dataset,
        "eval_classes": evaluation.eval_classes,
        "acc": float(evaluation.acc),
        "n_test": int(evaluation.n_test),
        "n_classes": int(evaluation.n_classes),
    }


def _recorded(reports_dir: Path, run_id: str) -> dict[tuple[str, str], Evaluation]:
    table = store.read_table(reports_dir, TABLE)
    table = table[table["run_id"] == run_id]
    found = {}
    for r in table.itertuples(index=False):
        found[(r.eval_dataset, r.eval_classes)] = Evaluation(
            r.eval_dataset, r.eval_classes, float(r.acc), int(r.n_test), int(r.n_classes), reused=True
        )
    return found


def evaluate_targets(
    loaded: LoadedModel,
    prompt: LearnedPrompt,
    targets: Sequence[tuple[str, EvalClasses | str]],
    load: Callable[[str], DatasetSplits],
    reports_dir: Path | str,
    cache_dir: Path | None,
    progress: bool = True,
) -> list[Evaluation]:
    """Evaluate ``prompt`` on each (dataset name, classes) not yet recorded for its run, and append those rows.

    ``load(name)`` returns a dataset. Targets already in the table are returned as recorded (reused).
    """
    run_id = str(prompt.identity["run_id"])
    wanted = [(name, choice(EvalClasses, classes, "class subset").value) for name, classes in targets]
    with store.claim(reports_dir, TABLE, run_id) as claim:
        recorded = _recorded(Path(reports_dir), run_id)
        fresh = [
            evaluate_context(loaded, prompt, load(name), classes, cache_dir, progress, name=name)
            for name, classes in dict.fromkeys(wanted)
            if (name, classes) not in recorded
        ]
        claim.append([evaluation_row(prompt.identity, prompt.protocol, e) for e in fresh])
    found = {**recorded, **{e.key: e for e in fresh}}
    return [found[key] for key in wanted]


def write_run_evaluations(
    session: Session, config: RunConfig, run_dir: Path, loaded: LoadedModel | None = None
) -> list[Evaluation]:
    """After training ``config`` into ``run_dir``: the evaluations its protocol asks for (none for fewshot,
    and then nothing is read), appended once. ``loaded``: the run's model (default: the session's)."""
    plan = protocols.evaluation_plan(config.protocol, config.dataset)
    if not plan:
        return []
    prompt = load_learned_prompt(run_dir)
    loaded = loaded or model_for_prompt(session, prompt)
    return evaluate_targets(
        loaded, prompt, plan, session.dataset, session.reports_dir, session.feature_cache, session.progress
    )


# ------------------------------------------------------------------------------------------ the command


def model_for_prompt(session: Session, prompt: LearnedPrompt) -> LoadedModel:
    """The session's frozen model the prompt was trained with, at its precision on CUDA (fp32 elsewhere)."""
    cuda = session.torch_device().type == "cuda"
    precision = (prompt.identity.get("precision") or None) if cuda else None
    return session.model(prompt.identity["backbone"], prompt.identity["pretrained"], precision)


def evaluate_saved(
    session: Session,
    *,
    run_id: str | None = None,
    prompt_path: Path | str | None = None,
    dataset: str | None = None,
    classes: EvalClasses | str = EvalClasses.ALL,
) -> tuple[LearnedPrompt, Evaluation]:
    """What ``nemesis evaluate`` does: one prompt (``run_id`` or ``prompt_path``) on one dataset's test split.

    ``dataset`` defaults to the one the prompt was trained on; the row is appended unless already there.
    """
    if (run_id is None) == (prompt_path is None):
        raise ConfigError("give exactly one of --run RUN_ID and --prompt PATH")
    classes = choice(EvalClasses, classes, "class subset")
    session.check_output_folders()  # a damaged table part is named before any work
    path = run_prompt_dir(session.checkpoints_dir, run_id) if run_id is not None else prompt_path
    prompt = load_learned_prompt(path)
    name = dataset or str(prompt.identity["dataset"])
    (evaluation,) = evaluate_targets(
        model_for_prompt(session, prompt), prompt, [(name, classes)], session.dataset, session.reports_dir,
        session.feature_cache, session.progress,
    )  # fmt: skip
    return prompt, evaluation
