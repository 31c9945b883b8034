"""Weights from files, tags and caches (no network, ever), QuickGELU resolution, and importing CoOp checkpoints."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nemesis_analysis.clip import weights
from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.errors import ModelError
from nemesis_analysis.methods.coop import CoOp
from nemesis_analysis.storage.artifacts import check_fits, find_dassl_checkpoint, read_prompt, save_prompt


@pytest.fixture()
def no_network(monkeypatch):
    """Fail the test on any network call: sockets and the hub download functions."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network call attempted: {args[1:]!r} {kwargs!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub
    import open_clip.pretrained

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse, raising=False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", refuse)


@pytest.fixture(scope="module")
def rn50_random():
    return load_model("RN50", "none", device="cpu")


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


# ------------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file_loads_identically(rn50_random, tmp_path, no_network, suffix):
    # A changed parameter proves the file (not the seeded random init) was loaded.
    state = {k: v.clone() for k, v in rn50_random.model.state_dict().items()}
    state["text_projection"] += 1.0
    path = tmp_path / f"rn50{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = load_model("RN50", str(path), device="cpu")
    assert loaded.weights_id.startswith(f"file:{path.name}:")
    assert loaded.extra["quick_gelu"] is False  # an unrecognised file keeps the architecture as asked
    assert loaded.preprocess_cfg["size"] == rn50_random.preprocess_cfg["size"]
    reference = rn50_random.model
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not torch.equal(loaded.model.text_projection, reference.text_projection)


def test_missing_and_broken_weights_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model("RN50", str(tmp_path / "nope.pt"), device="cpu")
    broken = tmp_path / "broken.pt"
    torch.save({"visual.nothing": torch.zeros(1)}, broken)
    with pytest.raises(ModelError, match=r"cannot load .*broken\.pt into RN50"):
        load_model("RN50", str(broken), device="cpu")


def test_openai_file_name_selects_quickgelu(rn50_random, tmp_path, no_network):
    # A file saved under OpenAI's release name is recognised as the openai tag: QuickGELU, same values.
    path = tmp_path / "RN50.pt"
    torch.save(rn50_random.model.state_dict(), path)
    loaded = load_model("RN50", str(path), device="cpu")
    assert loaded.extra["quick_gelu"] is True
    assert loaded.weights_id.endswith("+quickgelu")
    assert_same_parameters(loaded.model, rn50_random.model)


def test_torchscript_archives_are_detected(tmp_path):
    with pytest.warns(FutureWarning) if hasattr(torch, "compile") else contextlib.nullcontext():
        scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    assert weights.is_torchscript_archive(path)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    assert not weights.is_torchscript_archive(plain)
    assert weights.file_weights_quick_gelu("RN50", path) == (True, None)


# ------------------------------------------------------------------------------------------ QuickGELU


def test_openai_tag_resolves_to_quickgelu_variant():
    assert weights.resolve_tag_architecture("RN50", "openai") == weights.Architecture("RN50-quickgelu")
    assert weights.resolve_tag_architecture("RN50-quickgelu", "openai").name == "RN50-quickgelu"
    assert weights.resolve_tag_architecture("ViT-B-32", "laion2b_s34b_b79k") == weights.Architecture("ViT-B-32")
    # No -quickgelu config: QuickGELU is forced on the architecture instead.
    assert weights.resolve_architecture("nemesis-tiny", True) == weights.Architecture("nemesis-tiny", True)


def test_explicit_quickgelu_mismatch_is_refused():
    with pytest.raises(
        ModelError, match=r"QuickGELU mismatch: ViT-B-32-quickgelu .* trained with GELU; use --backbone ViT-B-32"
    ):
        weights.resolve_tag_architecture("ViT-B-32-quickgelu", "laion2b_s34b_b79k")
    with pytest.raises(ModelError, match="unknown weights 'nope' for RN50; tags: cc12m, openai, yfcc15m"):
        weights.resolve_tag_architecture("RN50", "nope")


# ------------------------------------------------------------------------------------ tags and caches


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_missing_tag_says_which_file(tmp_path, monkeypatch, no_network, how):
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as excinfo:
        load_model("RN50", "openai", device="cpu", offline=how == "flag", cache_dir=cache)
    message = str(excinfo.value)
    assert "\n" not in message
    assert "RN50/openai are not in the local cache" in message
    assert "timm/resnet50_clip.openai" in message and str(cache / "RN50.pt") in message
    assert "--pretrained FILE" in message


def test_unreachable_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    probed = []

    def unreachable(address, *args, **kwargs):  # the network's boundary: no route to any host
        probed.append(address)
        raise OSError(f"no route to {address[0]}")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ModelError, match="cannot reach huggingface.co to download RN50/openai"):
        load_model("RN50", "openai", device="cpu", cache_dir=tmp_path)
    assert probed == [("huggingface.co", 443)]  # one probe, no download attempt


def test_cached_tag_loads_without_network(rn50_random, tmp_path, no_network):
    # Both caches open_clip writes: the legacy url folder (OpenAI's file name) and the hub cache layout.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(rn50_random.model.state_dict(), legacy / "RN50.pt")
    assert weights.cached_weights_path("RN50", "openai", legacy) == legacy / "RN50.pt"
    assert weights.cached_tags("RN50", legacy) == ["openai"]
    loaded = load_model("RN50", "openai", device="cpu", offline=True, cache_dir=legacy)
    assert loaded.extra["quick_gelu"] is True and loaded.weights_id == "tag:openai+quickgelu"
    assert_same_parameters(loaded.model, rn50_random.model)

    hub = tmp_path / "hub"
    snapshot = hub / "models--timm--resnet50_clip.yfcc15m" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (hub / "models--timm--resnet50_clip.yfcc15m" / "refs").mkdir()
    (hub / "models--timm--resnet50_clip.yfcc15m" / "refs" / "main").write_text("0" * 40)
    save_file(
        {k: v.contiguous() for k, v in rn50_random.model.state_dict().items()},
        str(snapshot / "open_clip_model.safetensors"),
    )
    assert weights.cached_weights_path("RN50", "yfcc15m", hub) == snapshot / "open_clip_model.safetensors"
    loaded = load_model("RN50", "yfcc15m", device="cpu", offline=True, cache_dir=hub)
    assert loaded.extra["quick_gelu"] is True
    assert_same_parameters(loaded.model, rn50_random.model)


# ------------------------------------------------------------------------------- importing prompts


@pytest.fixture(scope="module")
def tiny_random():
    return load_model("nemesis-tiny", "none", device="cpu")


CLASSES = ["face", "leopard", "motorbike"]


def write_dassl(run_dir: Path, ctx: torch.Tensor, epoch: int = 50) -> Path:
    folder = run_dir / "prompt_learner"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.pth.tar-{epoch}"
    state = {
        "ctx": ctx.half(),  # CoOp trains RN50 in fp16
        "token_prefix": torch.randn(len(CLASSES), 1, ctx.shape[-1]),
        "token_suffix": torch.randn(len(CLASSES), 60, ctx.shape[-1]),
    }
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": None, "scheduler": None}, path)
    return path


@pytest.mark.parametrize("csc", [False, True])
def test_dassl_checkpoint_round_trip(tiny_random, tmp_path, csc):
    learner = CoOp(tiny_random, CLASSES, PromptConfig(n_ctx=4, csc=csc))
    ctx = learner.ctx.detach().half().float()  # exactly representable in the checkpoint's fp16
    path = write_dassl(tmp_path / "run", ctx)
    write_dassl(tmp_path / "run", torch.zeros_like(ctx), epoch=10)  # an older epoch beside it
    for given in (path, path.parent, tmp_path / "run"):
        loaded, meta = read_and_check(given, learner)
        assert torch.equal(loaded, ctx) and loaded.dtype == torch.float32
        assert meta["source"] == "coop-checkpoint" and meta["epoch"] == 50 and meta["csc"] is csc
    assert find_dassl_checkpoint(tmp_path / "run") == path


def test_our_artifact_loads_through_the_same_door(tiny_random, tmp_path):
    learner = CoOp(tiny_random, CLASSES, PromptConfig(n_ctx=4))
    save_prompt(tmp_path / "artifact", learner.ctx, {"width": learner.width})
    for given in (tmp_path / "artifact", tmp_path / "artifact" / "prompt.safetensors"):
        ctx, meta = read_and_check(given, learner)
        assert torch.equal(ctx, learner.ctx.detach()) and meta["source"] == "artifact"


@pytest.mark.parametrize(
    "shape, prompt, message",
    [
        ((4, 64), PromptConfig(n_ctx=4), "checkpoint context has width 64 but nemesis-tiny's text width is 128"),
        (
            (16, 128),
            PromptConfig(n_ctx=4),
            "checkpoint has 16 context vectors but the prompt is set up for 4; set prompt.n_ctx = 16",
        ),
        ((3, 4, 128), PromptConfig(n_ctx=4), r"class-specific context \(3, 4, 128\); set prompt.csc = true"),
        ((4, 128), PromptConfig(n_ctx=4, csc=True), "generic context .*; set prompt.csc = false"),
        ((5, 4, 128), PromptConfig(n_ctx=4, csc=True), "class-specific context for 5 classes but the dataset has 3"),
    ],
)
def test_shape_mismatch_is_one_clear_line(tiny_random, tmp_path, shape, prompt, message):
    learner = CoOp(tiny_random, CLASSES, prompt)
    path = write_dassl(tmp_path / "run", torch.zeros(shape))
    with pytest.raises(ModelError, match=message) as excinfo:
        read_and_check(path, learner)
    assert "\n" not in str(excinfo.value)


def test_not_a_prompt(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        read_and_check(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a prompt artifact"):
        read_and_check(tmp_path / "empty")
    folder = tmp_path / "run" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "epoch": 1}, folder / "model.pth.tar-1")
    with pytest.raises(ModelError, match="no 'ctx' in its state_dict"):
        read_and_check(folder / "model.pth.tar-1")


def test_pickled_code_is_refused(tmp_path):
    folder = tmp_path / "prompt_learner"
    folder.mkdir()
    torch.save({"state_dict": {"ctx": torch.zeros(4, 128)}, "epoch": 1, "extra": Path("x")}, folder / "model.pth.tar-1")
    with pytest.raises(ModelError, match="CoOp checkpoint .* is not a plain tensor file.*does not unpickle"):
        read_and_check(folder / "model.pth.tar-1")


def read_and_check(path, method=None):
    """(ctx, metadata) of any prompt file, checked against ``method`` when given."""
    prompt = read_prompt(path)
    if method is not None:
        check_fits(prompt.ctx, method, prompt.metadata, source=Path(path).name)
    return prompt.ctx, prompt.metadata
