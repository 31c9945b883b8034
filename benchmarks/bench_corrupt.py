"""Corruption sweep speed: the batched engine against the reference-style naive path.

    python benchmarks/bench_corrupt.py            # case 1 in full (naive path on all 593 variants: minutes)
    python benchmarks/bench_corrupt.py --quick    # naive path on a spread sample of variants, fewer ViT variants
    python benchmarks/bench_corrupt.py --device cuda   # both paths on a GPU, under the default precision (amp)
    python benchmarks/bench_corrupt.py --maple --quick # only the MaPLe case, small

Case 1 (digits): nemesis-tiny on the embedded digits, a short CoOp run, the default grid (593 variants for
n_ctx=16) on the 540 test images.
  naive: for every variant, re-encode the test images and run the corrupted prompts at full length (77
         tokens), one variant at a time (what the reference code does per corruption);
  ours:  ``run_corruption_sweep`` end to end (cached image features, stacked variants cut at the longest
         EOS, the class-shared prefix once per variant, states before the corrupted position reused, chunks,
         Parquet writes), divided by the number of variants;
  floor: one stacked text-tower pass over all variants (no corruption, no classification, no I/O),
         divided by their number.
  Predictions of the naive path and ours are asserted equal (fp32: but for float ties; amp on CUDA: but for
  differences within bf16 rounding, :data:`AMP_TOLERANCE` in cosine).

Case 2 (caltech101-size): random-init ViT-B-16 (``--pretrained none``, no download) with Caltech101's 100
class names and synthetic 224-pixel images. The naive cost is *projected* to Caltech101's 2,465 test
images from a measured per-image encode time and a measured per-variant 77-token text pass. Ours runs the
batched prediction (corruption, stacked text pass, classification) on a reduced number of variants against
2,465 synthetic random image features (fine for ours: image features are encoded once and cached, so
their values do not change the cost). Prints one line per case and, last, ``speedup: <x>`` for case 1.

Case maple-digits (``--maple``, run alone): a short MaPLe run (M = 2, 3 prompted layers) on the tiny CLIP. Its image
features depend on the prompts, so every variant re-encodes the test images in both towers.
  naive: every variant alone through both towers from the input;
  ours:  ``run_corruption_sweep`` end to end (variants batched, both towers' states at the changed layer's
         input cached and reused), divided by the number of variants.
  Predictions asserted equal (fp32, but for float ties).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from classnames import CALTECH_CLASSNAMES  # benchmarks/ is on sys.path when run as a script

from nemesis_analysis.choices import Precision
from nemesis_analysis.clip.features import encode_samples, image_features
from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.config import NemesisConfig, PromptConfig, RunConfig
from nemesis_analysis.corruption.engine import predict_corruptions, predict_variants
from nemesis_analysis.corruption.ops import apply_corruptions, corrupt_context, expand_grid
from nemesis_analysis.corruption.reference import FullLengthPrompts
from nemesis_analysis.corruption.sweep import row_key, run_corruption_sweep
from nemesis_analysis.corruption.sweep_runs import method_for_identity
from nemesis_analysis.methods.coop import CoOp
from nemesis_analysis.metrics import TIE_TOLERANCE, differing_predictions
from nemesis_analysis.session import Session
from nemesis_analysis.storage.artifacts import read_prompt
from nemesis_analysis.storage.schema import CORRUPTION_KEY
from nemesis_analysis.training.train import load_model_and_data, train_prompt

CALTECH_TEST_IMAGES = 2465
AMP_TOLERANCE = 5e-2  # cosine gap within which bf16 rounding (amp) may flip a prediction


def _tolerance(loaded) -> float:
    return TIE_TOLERANCE if loaded.precision == Precision.FP32 else AMP_TOLERANCE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(function, repeat: int = 1, device: torch.device = torch.device("cpu")) -> float:
    """Best of ``repeat`` wall-clock timings of ``function()`` (the device synchronised around each)."""
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        function()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def _line(name: str, naive: float, ours: float, floor: float, note: str = "") -> str:
    speedup = naive / ours
    return (
        f"case {name}: naive {naive:.4g}s/variant{note}, ours {ours:.4g}s/variant, floor {floor:.4g}s/variant, "
        f"speedup {speedup:.0f}x{note}"
    )


def require(condition: bool, what: str) -> None:
    """A benchmark check: raises with ``what`` (what differed and by how much) unless ``condition``."""
    if not condition:
        raise AssertionError(what)


def near_ties(scores: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Per row of ``scores`` (variants, n_test, classes): images whose two best classes are within
    ``tolerance`` (where float rounding may pick either): (variants,) long."""
    top2 = scores.topk(2, dim=-1).values  # (variants, n_test, 2)
    return ((top2[..., 0] - top2[..., 1]) <= tolerance).sum(dim=-1)


def check_table(rows, measured, learner, predictions, naive_scores, labels, loaded) -> int:
    """The sweep table's accuracy of every measured variant against ``predictions``' accuracy, allowing each
    image whose naive scores are a float tie (:func:`near_ties`) to flip, as the naive comparison does; returns
    how many images the table's accuracies differ by in all (raises, saying where and by how much, beyond that)."""
    accs = rows.set_index(list(CORRUPTION_KEY))["acc"]
    n_test = len(labels)
    amp_slack = 0.0 if loaded.precision == Precision.FP32 else 1.0  # amp: chunking may flip a near-tie
    allowed = near_ties(naive_scores.float(), _tolerance(loaded))
    differing = 0
    for index, (corruption, predicted) in enumerate(zip(measured, predictions)):
        key = row_key(corruption, learner.position_pairs())
        expected = 100.0 * float((predicted == labels).double().mean())
        gap = abs(float(accs[key]) - expected)
        slack = max(amp_slack, 100.0 * int(allowed[index]) / n_test) + 1e-9
        require(
            gap <= slack,
            f"table acc of {key} is {float(accs[key]):.4f}%, predictions give {expected:.4f}%: differs by {gap:.4f} "
            f"points ({gap * n_test / 100:.1f} images), more than its {int(allowed[index])} float ties allow",
        )
        differing += round(gap * n_test / 100)
    return differing


# --------------------------------------------------------------------------------------------------- case 1


def case_digits(checkpoints: Path, quick: bool, device: str) -> float:
    reports = Path(tempfile.mkdtemp(prefix="bench-corrupt-reports-"))
    session = Session(checkpoints, reports, device=device, progress=False)
    config = RunConfig(shots=4, epochs=10)
    loaded, dataset = load_model_and_data(config, session)
    run = train_prompt(config, session)
    ctx = read_prompt(run.run_dir).ctx
    identity = run.config.identity(n_ctx=ctx.shape[-2])
    grid = expand_grid(ctx.shape[-2])
    learner = method_for_identity(loaded, dataset.classnames, identity)
    features, labels = image_features(  # warms the shared cache, as training already did
        loaded, dataset, dataset.test, session.feature_cache, progress=False
    )
    test = dataset.test

    # ours: the whole sweep, end to end, into an empty table
    started = time.perf_counter()
    summary = run_corruption_sweep(session, learner, ctx, identity, grid)
    ours = (time.perf_counter() - started) / len(grid)
    require(summary.rows_written == len(grid), f"the sweep wrote {summary.rows_written} rows for {len(grid)} variants")

    # floor: one stacked text pass over every variant
    variants = apply_corruptions(ctx, grid, run.run_id)  # (593, n_ctx, width)
    with torch.no_grad():
        floor = _seconds(lambda: learner.text_features(variants), repeat=2, device=loaded.device) / len(grid)

    # naive: every variant alone, images re-encoded, 77 tokens
    measured = grid[:: max(1, len(grid) // 24)] if quick else grid
    full = FullLengthPrompts(learner)
    naive_scores = []
    started = time.perf_counter()
    with torch.no_grad():
        for corruption in measured:
            variant = corrupt_context(ctx, corruption, run.run_id)
            image = encode_samples(loaded, dataset, test, progress=False)  # (n_test, embed)
            text = full.text_features(variant)  # (classes, embed)
            naive_scores.append(image.to(text.device) @ text.T)  # (n_test, classes)
    _sync(loaded.device)
    naive = (time.perf_counter() - started) / len(measured)

    # Same predictions, except where two classes' cosines agree to float32 precision (then rounding decides).
    ours_predictions = predict_corruptions(learner, ctx, measured, run.run_id, features)
    naive_stack = torch.stack(naive_scores)  # (variants, n_test, classes)
    ties = differing_predictions(naive_stack, ours_predictions, _tolerance(loaded))
    table_ties = check_table(summary.rows, measured, learner, ours_predictions, naive_stack, labels, loaded)

    print(
        f"digits: {len(grid)} variants x {dataset.num_classes} classes, {len(test)} test images, "
        f"prompt length {learner.base.shape[1]} of 77 tokens; naive measured on {len(measured)} of {len(grid)} "
        f"variants; predictions equal but for {ties} float ties of {len(measured) * len(test)}, table accuracies "
        f"but for {table_ties}; "
        f"acc_original {summary.acc_original:.2f}%; {loaded.device.type}, {loaded.precision.value}"
    )
    print(_line("digits", naive, ours, floor))
    shutil.rmtree(session.reports_dir, ignore_errors=True)  # the benchmark's throw-away table
    return naive / ours


# --------------------------------------------------------------------------------------------------- case 2


def case_caltech_size(checkpoints: Path, quick: bool, num_variants: int, device: str) -> float:
    loaded = load_model("ViT-B-16", "none", device=device, checkpoints_dir=checkpoints, progress=False)
    learner = CoOp(loaded, CALTECH_CLASSNAMES, PromptConfig(n_ctx=16), seed=1)
    ctx = learner.ctx.detach().cpu()
    grid = expand_grid(16)
    sample = grid[:: max(1, len(grid) // num_variants)][:num_variants]

    # naive per-image cost: PIL image -> preprocess -> image tower, on a few synthetic images
    generator = torch.Generator().manual_seed(0)
    num_images = 2 if quick else 8
    from PIL import Image

    pixels = (torch.rand(num_images, 224, 224, 3, generator=generator) * 255).to(torch.uint8).numpy()
    images = [Image.fromarray(p) for p in pixels]
    encode = lambda: loaded.encode_images(torch.stack([loaded.preprocess(i) for i in images]))  # noqa: E731
    encode()  # warm-up
    per_image = _seconds(encode, device=loaded.device) / num_images
    sample_features = encode()  # (num_images, embed)

    # naive per-variant text cost: 100 prompts of 77 tokens
    full = FullLengthPrompts(learner)
    variant = corrupt_context(ctx, sample[1], "bench")
    per_text = _seconds(lambda: full.text_features(variant), device=loaded.device)
    naive = CALTECH_TEST_IMAGES * per_image + per_text
    naive_scores = sample_features @ full.text_features(variant).T  # (images, classes)
    ours_predictions = predict_variants(learner, variant[None], sample_features)[0]
    differing_predictions(naive_scores, ours_predictions, _tolerance(loaded))  # raises unless equal up to ties

    # ours: batched predictions on the reduced grid against 2,465 cached (synthetic) features
    features = F.normalize(torch.randn(CALTECH_TEST_IMAGES, loaded.embed_dim, generator=generator), dim=-1).to(
        loaded.device
    )
    ours = _seconds(lambda: predict_corruptions(learner, ctx, sample, "bench", features)) / len(sample)
    variants = apply_corruptions(ctx, sample, "bench")
    with torch.no_grad():
        floor = _seconds(lambda: learner.text_features(variants), device=loaded.device) / len(sample)

    print(
        f"caltech101-size: random-init ViT-B-16 ({loaded.device.type}, {loaded.precision.value}), 100 classes, "
        f"prompt length {learner.base.shape[1]} of 77 tokens with {learner.shared_tokens} shared; "
        f"naive projected to {CALTECH_TEST_IMAGES} images from {per_image:.3f} s/image ({num_images} measured) + "
        f"{per_text:.2f} s per 77-token text pass; ours and floor on {len(sample)} variants with synthetic cached "
        f"features"
    )
    print(_line("caltech101-size", naive, ours, floor, note=" (projected)"))
    return naive / ours


# ------------------------------------------------------------------------------------------- case maple


def case_maple(checkpoints: Path, quick: bool, device: str) -> float:
    from nemesis_analysis.corruption.sweep import load_test_set
    from nemesis_analysis.corruption.sweep_runs import sweep_trained_run

    reports = Path(tempfile.mkdtemp(prefix="bench-corrupt-maple-"))
    session = Session(checkpoints, reports, device=device, progress=False)
    config = RunConfig(shots=2, epochs=2, prompt=PromptConfig(method="maple", n_ctx=2), nemesis=NemesisConfig(beta=1.0))
    run = train_prompt(config, session)
    max_test = 60 if quick else 200
    grid = expand_grid(6, factors=(0.5, 1.0, 2.0), stds=(0.02,), reps=1 if quick else 2)
    started = time.perf_counter()
    summary = sweep_trained_run(session, run, grid, max_test=max_test)
    ours = (time.perf_counter() - started) / len(grid)
    loaded, dataset = load_model_and_data(run.config, session)
    from nemesis_analysis.methods import build_method_for_run

    method = build_method_for_run(run.config, loaded, dataset.classnames)
    method.load(run.run_dir)
    ctx = method.position_tensor().detach().cpu()
    test = load_test_set(session, method, run.config.dataset, max_test=max_test)
    naive_scores = []
    started = time.perf_counter()
    with torch.no_grad():
        for corruption in grid:
            variant = corrupt_context(ctx, corruption, run.run_id)
            naive_scores.append(method.variant_scores(variant[None], test.features)[0])
    _sync(loaded.device)
    naive = (time.perf_counter() - started) / len(grid)
    ours_predictions = predict_corruptions(method, ctx, grid, run.run_id, test.features)
    ties = differing_predictions(torch.stack(naive_scores), ours_predictions, _tolerance(loaded))
    accs = summary.rows.set_index(list(CORRUPTION_KEY))["acc"]
    keys = [(*pair, layer) for pair, layer in zip(method.position_pairs(), method.position_layers())]
    for corruption, predictions in zip(grid, ours_predictions):
        assert abs(accs[row_key(corruption, keys)] - 100.0 * float((predictions == test.labels).double().mean())) < 1e-9
    print(f"maple-digits: {len(grid)} variants over {method.depth} layers, {test.size} test images; predictions "
          f"equal but for {ties} float ties; {summary.num_invisible} invisible; {loaded.device.type}, "
          f"{loaded.precision.value}")  # fmt: skip
    print(f"case maple-digits: naive {naive:.4g}s/variant, ours {ours:.4g}s/variant, speedup {naive / ours:.1f}x")
    shutil.rmtree(reports, ignore_errors=True)
    return naive / ours


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Naive path on a sample of variants; fewer ViT variants.")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="Holds the tiny CLIP cache.")
    parser.add_argument("--variants", type=int, default=None, help="Case 2: variants for ours (default 32; quick 4).")
    parser.add_argument("--skip-case2", action="store_true", help="Only case 1.")
    parser.add_argument("--maple", action="store_true", help="Only the MaPLe case (small; with --quick, smaller).")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both paths under the model's default precision).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("bench_corrupt: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    if args.maple:
        print(f"speedup: {case_maple(args.checkpoints, args.quick, args.device):.1f}x")
        return 0
    speedup = case_digits(args.checkpoints, args.quick, args.device)
    if not args.skip_case2:
        case_caltech_size(args.checkpoints, args.quick, args.variants or (4 if args.quick else 32), args.device)
    print(f"speedup: {speedup:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
