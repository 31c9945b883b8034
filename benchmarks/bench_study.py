"""Study throughput: a whole few-shot corruption study as shell loops run it against ``nemesis study run``, and
one fused training step of sibling runs against their separate steps.

    python benchmarks/bench_study.py              # both cases (about 10 minutes of study + the ViT case on CPU)
    python benchmarks/bench_study.py --quick      # a smaller study (1-2 minutes) and one measured ViT step
    python benchmarks/bench_study.py --skip-fused # only the study case

Case ``study-digits``: a miniature of the paper's few-shot corruption study on the embedded default (digits +
nemesis-tiny): shots 1/2/4, seeds 1-3, CoOp/PUN/PAN (27 runs; quick: shots 1/2, seed 1, 6 runs), a small
rescale grid. Reference: for every run one fresh ``nemesis train`` process and one fresh ``nemesis corrupt``
process, as the official scripts' shell loops do. Ours: one ``nemesis study run`` process (sibling runs train
fused, models and features stay warm). Both start from the same warm tiny-CLIP cache and empty output folders;
the runs (ids, final accuracies to one test image) and the corruption rows of both are asserted equal.

Case ``fused-caltech101-size``: three sibling runs (CoOp, PUN, PAN) on a random-init ViT-B-16 with Caltech101's
100 class names and synthetic 224-pixel batches of 32. Reference: each sibling's own ``train.train_step`` (the
image tower once per sibling); ours: the batch encoded once (``train.encode_batch``), then each sibling's
``train.member_step``, as fused training runs it. Losses of every sibling and step are asserted equal; peak
memory (resident set above the start on CPU, allocated on CUDA) of both paths is reported.

Each case prints ``case <name>: reference <X>s, ours <Y>s, speedup <Z>x``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import BATCH, OPTIM, PeakMemory, _mib, _sync, _synthetic_batches
from classnames import CALTECH_CLASSNAMES

from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.config import NemesisConfig, PromptConfig, RunConfig
from nemesis_analysis.methods.coop import CoOp
from nemesis_analysis.storage import store
from nemesis_analysis.training.train import (
    TrainingRun,
    build_optimizer,
    encode_batch,
    member_step,
    train_step,
)

ONE_TEST_IMAGE = 100.0 / 540  # digits' test split, in accuracy points
VARIANTS = {"coop": [], "pun": ["--pun"], "pan": ["--pan"]}
STUDY = """
[study]
name = "bench"

[grid]
datasets = ["digits"]
shots = {shots}
seeds = {seeds}
backbones = ["nemesis-tiny"]
methods = ["coop", "pun", "pan"]
epochs = {epochs}

[corrupt]
ops = ["rescale"]
positions = {positions}
factors = {factors}

[outputs]
checkpoints = "{checkpoints}"
reports = "{reports}"
device = "cpu"
"""


def require(condition: bool, what: str) -> None:
    """A benchmark check: raises with ``what`` (what differed and by how much) unless ``condition``."""
    if not condition:
        raise AssertionError(what)


# --------------------------------------------------------------------------------------------------- study


def _nemesis(*args: str, env: dict) -> float:
    """Run ``nemesis ARGS`` in a fresh process; its wall-clock seconds (a failure raises with its output)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nemesis_analysis.cli", *args], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    require(done.returncode == 0, f"nemesis {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return seconds


def _folders(root: Path, name: str) -> tuple[Path, Path]:
    """Empty checkpoints and reports folders for one path (the tiny CLIP lives in the per-user cache)."""
    checkpoints, reports = root / name / "checkpoints", root / name / "reports"
    checkpoints.mkdir(parents=True)
    return checkpoints, reports


def case_study(quick: bool, epochs: int | None, root: Path, env: dict, shots=None, seeds=None) -> None:
    shots = shots or ([1, 2] if quick else [1, 2, 4])
    seeds = seeds or ([1] if quick else [1, 2, 3])
    epochs = epochs or (5 if quick else 20)
    positions, factors = [0, 4, 8, 12], [0.0, 0.1, 0.5, 2.0, 10.0]
    grid = ["--ops", "rescale", "--positions", ",".join(map(str, positions)), "--factors", ",".join(map(str, factors))]
    _nemesis("train", "--quiet", "--device", "cpu", "--shots", "1", "--epochs", "1", "--checkpoints",
             str(root / "warm"), "--reports", str(root / "warm-reports"), env=env)  # fmt: skip
    # (the tiny CLIP is pretrained once, into the per-user cache, before either path is timed)

    ref_ck, ref_reports = _folders(root, "reference")
    reference = 0.0
    for shot in shots:
        for seed in seeds:
            for flags in VARIANTS.values():
                common = ["--quiet", "--device", "cpu", "--shots", str(shot), "--seed", str(seed), "--epochs",
                          str(epochs), *flags, "--checkpoints", str(ref_ck), "--reports", str(ref_reports)]  # fmt: skip
                reference += _nemesis("train", *common, env=env)
                reference += _nemesis("corrupt", *common, *grid, env=env)

    ours_ck, ours_reports = _folders(root, "ours")
    study = root / "study.toml"
    study.write_text(STUDY.format(shots=shots, seeds=seeds, epochs=epochs, positions=positions, factors=factors,
                                  checkpoints=ours_ck, reports=ours_reports))  # fmt: skip
    ours = _nemesis("study", "run", str(study), "--quiet", "--no-figures", env=env)  # the reference draws none
    runs = len(shots) * len(seeds) * len(VARIANTS)
    note = check_same_tables(ref_reports, ours_reports, runs)
    print(
        f"study-digits: {runs} runs (shots {shots}, seeds {seeds}, coop/pun/pan, {epochs} epochs), rescale at "
        f"{len(positions)} positions x {len(factors)} factors; reference {2 * runs} fresh processes, ours one "
        f"`nemesis study run`; {note}"
    )
    print(f"case study-digits: reference {reference:.1f}s, ours {ours:.1f}s, speedup {reference / ours:.1f}x")


def check_same_tables(reference: Path, ours: Path, runs: int) -> str:
    """The two paths' runs (ids, final accuracy to one test image) and corruption rows agree; a short note."""
    a = store.read_table(reference, "runs").set_index("run_id").sort_index()
    b = store.read_table(ours, "runs").set_index("run_id").sort_index()
    require(
        len(a) == runs and list(a.index) == list(b.index),
        f"run ids differ: reference {list(a.index)}, ours {list(b.index)}",
    )
    gap = (a["final_test_acc"] - b["final_test_acc"]).abs()
    require(bool((gap <= ONE_TEST_IMAGE + 1e-9).all()), f"final accuracies differ by up to {gap.max():.3f} points")
    key = ["run_id", "op", "prompt_index", "position", "factor", "rep"]
    ca = store.read_table(reference, "corruptions").set_index(key).sort_index()["acc"]
    cb = store.read_table(ours, "corruptions").set_index(key).sort_index()["acc"]
    require(ca.index.equals(cb.index), f"corruption keys differ: {len(ca)} reference rows, {len(cb)} ours")
    worst = float((ca - cb).abs().max())
    require(worst <= ONE_TEST_IMAGE + 1e-9, f"corruption accuracies differ by up to {worst:.3f} points")
    return f"runs and {len(ca)} corruption rows equal (largest accuracy gap {max(float(gap.max()), worst):.3g} points)"


# --------------------------------------------------------------------------------------------------- fused

SIBLINGS = {"coop": None, "pun": 1.0, "pan": 0.0}


def _siblings(loaded, ctx0: torch.Tensor) -> list[TrainingRun]:
    """Three fresh runs (CoOp, PUN, PAN) from the same context, each with its own SGD."""
    runs = []
    for beta in SIBLINGS.values():
        learner = CoOp(loaded, CALTECH_CLASSNAMES, PromptConfig(n_ctx=16), seed=1)
        with torch.no_grad():
            learner.ctx.copy_(ctx0)
        config = RunConfig(nemesis=NemesisConfig(beta=beta))
        optimizer = build_optimizer(list(learner.slots().values()), OPTIM)
        empty = torch.empty(0)
        runs.append(TrainingRun(config, loaded, learner, optimizer, images=None, test_features=empty,
                                test_labels=empty, zero_shot_acc=float("nan"), run_dir=None))  # fmt: skip
    return runs


def _path(loaded, ctx0, batches, fused: bool) -> tuple[float, int, list[list[float]]]:
    """(seconds per measured step, peak bytes, losses[step][sibling]); the first batch warms up, untimed."""
    runs = _siblings(loaded, ctx0)
    generators = [torch.Generator().manual_seed(0) for _ in runs]  # PAN's draws: the same stream in both paths
    losses = []

    def step(pixels, labels):
        encoded = {}
        out = []
        for run, generator in zip(runs, generators):
            if fused:
                features, local = encode_batch(run.method, pixels, encoded)
                values, _ = member_step(run, features, local, labels, 1.0, generator, epoch=0)
            else:
                values, _ = train_step(run, pixels, labels, 1.0, generator, epoch=0)
            out.append(float(values["loss"]))
        return out

    with PeakMemory(loaded.device) as memory:
        step(*batches[0])
        _sync(loaded.device)
        started = time.perf_counter()
        for pixels, labels in batches[1:]:
            losses.append(step(pixels, labels))
        _sync(loaded.device)
        seconds = (time.perf_counter() - started) / max(1, len(batches) - 1)
    return seconds, memory.peak, losses


def case_fused(device: torch.device, steps: int, backbone: str) -> None:
    loaded = load_model(backbone, "none", device=device, progress=False)
    ctx0 = CoOp(loaded, CALTECH_CLASSNAMES, PromptConfig(n_ctx=16), seed=1).ctx.detach().clone()
    batches = _synthetic_batches(loaded, len(CALTECH_CLASSNAMES), steps + 1, seed=2)
    reference, ref_peak, ref_losses = _path(loaded, ctx0, batches, fused=False)
    ours, ours_peak, ours_losses = _path(loaded, ctx0, batches, fused=True)
    rtol = 1e-5 if loaded.precision.value == "fp32" else 2e-2
    for index, (a, b) in enumerate(zip(ref_losses, ours_losses)):
        for name, x, y in zip(SIBLINGS, a, b):
            require(abs(x - y) <= rtol * max(abs(x), 1e-6), f"step {index} {name}: reference loss {x} vs fused {y}")
    print(
        f"fused-caltech101-size: random-init {backbone} ({loaded.device.type}, {loaded.precision.value}), 100 classes, "
        f"batch {BATCH}, siblings {'/'.join(SIBLINGS)}, {steps} measured steps; losses equal to {rtol:g} relative; "
        f"peak memory reference {_mib(ref_peak)}, fused {_mib(ours_peak)}"
    )
    print(f"case fused-caltech101-size: reference {reference:.2f}s, ours {ours:.2f}s, speedup {reference / ours:.1f}x")


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(part) for part in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A 6-run study and one measured fused step.")
    parser.add_argument("--epochs", type=int, default=None, help="Study epochs per run (default 20; quick 5).")
    parser.add_argument("--shots", default=None, help="Study shots, e.g. 1,2 (default 1,2,4; quick 1,2).")
    parser.add_argument("--seeds", default=None, help="Study seeds, e.g. 1 (default 1,2,3; quick 1).")
    parser.add_argument("--steps", type=int, default=None, help="Fused case: measured steps (default 2; quick 1).")
    parser.add_argument("--device", default="cpu", help="Fused case: cpu or cuda (the study runs on CPU).")
    parser.add_argument("--backbone", default="ViT-B-16", help="Fused case: the random-init architecture.")
    parser.add_argument("--skip-study", action="store_true", help="Only the fused case.")
    parser.add_argument("--skip-fused", action="store_true", help="Only the study case.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_study: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    if not args.skip_study:
        root = Path(tempfile.mkdtemp(prefix="bench-study-"))
        repo = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
        try:
            case_study(args.quick, args.epochs, root, env, _ints(args.shots), _ints(args.seeds))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if not args.skip_fused:
        case_fused(device, args.steps or (1 if args.quick else 2), args.backbone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
