"""Device rules: impossible device settings refused in one line before any work (with the CUDA boundary
monkeypatched), the default precision per device, one frozen model per session, and PLOT's local features
kept on the host and moved in chunks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from study_helpers import TINY_STUDY
from typer.testing import CliRunner

from nemesis_analysis import devices
from nemesis_analysis.choices import Precision
from nemesis_analysis.cli import app
from nemesis_analysis.config import PLOTConfig, PromptConfig, RunConfig
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.session import Session
from nemesis_analysis.study.executors import LocalExecutor, RayExecutor
from nemesis_analysis.study.spec import load_study

runner = CliRunner()


def fake_gpus(monkeypatch, count: int, capability: tuple[int, int] = (8, 0)) -> None:
    """This process sees ``count`` CUDA devices of compute capability ``capability`` (no CUDA call is made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


# ------------------------------------------------------------------------------------- --device refusals


@pytest.mark.parametrize(
    ("count", "device", "expected"),
    [(0, "cuda", "no CUDA device is visible"), (0, "cuda:0", "no CUDA device is visible"),
     (1, "cuda:5", "has 1 CUDA device(s) (cuda:0)"), (2, "cuda:2", "has 2 CUDA device(s) (cuda:0, cuda:1)"),
     (1, "tpu", "unknown device"), (1, "mps", "not supported")],
)  # fmt: skip
def test_a_device_this_machine_lacks_is_refused_when_the_session_is_built(monkeypatch, count, device, expected):
    fake_gpus(monkeypatch, count)
    with pytest.raises(ConfigError, match="^[^\n]*$") as error:
        Session(device=device)
    assert expected in str(error.value) and device in str(error.value)


def test_cli_refuses_a_missing_gpu_with_one_line_and_exit_2(monkeypatch, tmp_path):
    fake_gpus(monkeypatch, 1)
    result = runner.invoke(app, ["train", "--device", "cuda:5", "--checkpoints", str(tmp_path / "ck"),
                                 "--reports", str(tmp_path / "rep")])  # fmt: skip
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cuda:5" in lines[0] and "1 CUDA device" in lines[0]
    assert not (tmp_path / "ck").exists() and not (tmp_path / "rep").exists()  # refused before any work


def test_cpu_and_auto_sessions_touch_no_cuda(monkeypatch):
    def boom():
        raise AssertionError("CUDA was asked")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    assert Session(device="cpu").device == "cpu" and Session().device == "auto"


# ----------------------------------------------------------------------------------------- precision


def test_default_precision_is_amp_only_where_bf16_is_native(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert devices.default_precision(cpu) == Precision.FP32
    fake_gpus(monkeypatch, 1, capability=(8, 0))
    assert devices.default_precision(cuda) == Precision.AMP
    assert devices.resolve_precision(None, cuda) == Precision.AMP
    fake_gpus(monkeypatch, 1, capability=(7, 5))  # T4: no native bf16
    assert devices.default_precision(cuda) == Precision.FP32
    assert devices.resolve_precision("fp16", cuda) == Precision.FP16
    with pytest.raises(ConfigError, match="Tesla T4 does not compute natively; use fp32 or fp16"):
        devices.resolve_precision("amp", cuda)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        devices.resolve_precision(Precision.FP16, cpu)


def test_run_configs_resolve_to_the_device_default_and_keep_cpu_run_ids():
    cpu = torch.device("cpu")
    config = RunConfig(shots=4)
    resolved = devices.resolve_run_config(config, cpu)
    assert resolved.precision == Precision.FP32
    assert resolved == config.resolved("cpu") and resolved.run_id == config.resolved("cpu").run_id


def test_a_train_then_a_sweep_in_one_session_hold_one_model(tiny_session, checkpoints_dir, tmp_path):
    """The model cache keys on the resolved precision: training (precision unset) and the sweep of its run
    (precision recorded as fp32) share one frozen CLIP."""
    from nemesis_analysis.corruption.ops import expand_grid
    from nemesis_analysis.corruption.sweep_runs import sweep_trained_run
    from nemesis_analysis.training.train import train_prompt

    session = Session(tmp_path / "ck", tmp_path / "rep", device="cpu", progress=False)
    session.checkpoints_dir.mkdir()
    (session.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    session._datasets = tiny_session._datasets  # the digits, already loaded; the model cache starts empty
    run = train_prompt(RunConfig(shots=1, epochs=1, prompt=PromptConfig(n_ctx=2)), session)
    assert run.config.precision == Precision.FP32 and len(session._models) == 1
    loaded = next(iter(session._models.values()))
    sweep_trained_run(session, run, expand_grid(2, ops=["rescale"], factors=[0.5], stds=[], reps=1))
    assert list(session._models.values()) == [loaded]
    assert session.model("nemesis-tiny", "embedded") is loaded is session.model("nemesis-tiny", "embedded", "fp32")


# ------------------------------------------------------------------------------------------ study refusals


def study(tmp_path, outputs: str = 'device = "cpu"', gpus: str = "0"):
    """The tiny study with ``outputs``' device line and ``resources.num_gpus = gpus``."""
    text = TINY_STUDY.format(checkpoints=tmp_path / "ck", reports=tmp_path / "rep")
    text = text.replace('device = "cpu"', outputs).replace("num_cpus = 1\n", f"num_cpus = 1\nnum_gpus = {gpus}\n")
    path = tmp_path / "study.toml"
    path.write_text(text)
    return load_study(path)


@pytest.mark.parametrize(
    ("executor", "outputs", "resources", "gpus", "expected"),
    [("local", 'device = "cuda"', "0", 1, "resources.num_gpus = 0 gives the jobs no GPU"),
     ("ray", 'device = "cuda"', "0", 1, "resources.num_gpus = 0 gives the jobs no GPU"),
     ("ray", 'device = "cuda:1"', "1", 2, "sees the GPU it holds as cuda:0"),
     ("local", 'device = "auto"', "1", 0, "no CUDA device is visible"),
     ("local", 'device = "cuda:3"', "1", 2, "has 2 CUDA device(s)")],
)  # fmt: skip
def test_impossible_study_devices_are_refused_before_any_work(monkeypatch, tmp_path, executor, outputs, resources,
                                                              gpus, expected):  # fmt: skip
    fake_gpus(monkeypatch, gpus)
    spec = study(tmp_path, outputs, resources)
    started = []
    monkeypatch.setattr("nemesis_analysis.study.work.session_for", lambda *a, **k: started.append(a))
    executor_class = LocalExecutor if executor == "local" else RayExecutor
    with pytest.raises(ConfigError, match="^[^\n]*$") as error:
        executor_class(spec)
    assert expected in str(error.value) and not started


def test_local_jobs_run_on_the_device_the_plan_resolved_for(monkeypatch, tmp_path):
    """``device = "auto"``: the local executor's jobs run where the plan resolved precision (num_gpus), so
    a machine's GPU never silently runs fp32-planned jobs (and their run ids) on CUDA."""
    from nemesis_analysis.study.executors import local_outputs
    from nemesis_analysis.study.plan import make_plan

    fake_gpus(monkeypatch, 1)
    spec = study(tmp_path, 'device = "auto"')
    assert local_outputs(spec.outputs, spec.resources.num_gpus).device == "cpu"
    assert local_outputs(spec.outputs, 1.0).device == "cuda"
    assert local_outputs(dataclasses.replace(spec.outputs, device="cuda:0"), 1.0).device == "cuda:0"
    job = next(job for job in make_plan(spec).jobs if job.kind == "train")
    assert job.payload["config"]["precision"] == "fp32"  # planned for the CPU, where the jobs run


# -------------------------------------------------------------------------------------- PLOT on the host


class MoveSpy(torch.Tensor):
    """A tensor that records the rows of every ``.to`` of itself or of a slice of it."""

    moves: list[int] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            cls.moves.append(int(args[0].shape[0]))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_plot_moves_local_features_in_chunks_and_scores_them_alike(tiny_context):
    """The whole local-feature tensor is never moved: only chunks of at most the chunk's images, and any
    chunk size gives the scores of one chunk."""
    from nemesis_analysis.clip.features import encode_images_with_local
    from nemesis_analysis.corruption.engine import predict_variants
    from nemesis_analysis.methods.plot import PLOTMethod

    loaded, dataset = tiny_context.loaded, tiny_context.dataset
    method = PLOTMethod(loaded, dataset.classnames, PromptConfig(n_ctx=2), seed=1, options=PLOTConfig(num_prompts=2))
    images = torch.stack([loaded.preprocess(dataset.load_image(s.source)) for s in dataset.test[:24]])
    features, local = encode_images_with_local(loaded, images)  # (24, embed), (24, locations, embed)
    variants = method.position_tensor().detach()[None].repeat(3, 1, 1)
    variants[1, 0] *= 0.5
    variants[2, 3] *= 2.0
    method.chunk_floats = 10**12  # one chunk
    whole = method.variant_scores(variants, features, local)
    per_image = 3 * dataset.num_classes * 2 * local.shape[1]
    method.chunk_floats = 5 * per_image  # chunks of 5 images
    MoveSpy.moves = []
    spied = local.as_subclass(MoveSpy)
    chunked = method.variant_scores(variants, features, spied)
    assert MoveSpy.moves == [5, 5, 5, 5, 4]  # never the 24 images at once
    torch.testing.assert_close(chunked.as_subclass(torch.Tensor), whole, rtol=1e-6, atol=1e-6)
    MoveSpy.moves = []
    predictions = predict_variants(method, variants, features, spied)
    assert max(MoveSpy.moves) == 5 and torch.equal(predictions.as_subclass(torch.Tensor), whole.argmax(-1))


def test_host_features_stay_where_they_are_on_a_cpu_device():
    local = torch.randn(4, 3, 2)
    assert devices.host_features(local, torch.device("cpu")) is local
    assert devices.host_features(None, torch.device("cpu")) is None
    assert devices.memory_budget(torch.device("cpu"), 123) == 123
