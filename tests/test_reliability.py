"""Reliability through the CLI: custom-dataset identity, --force, concurrent writers, unwritable folders, damaged
files, interruption and the per-user tiny CLIP cache. Every failure is one line on stderr, exit code 2, no
traceback, and nothing already written is lost."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.data.fixtures import make_custom_folder
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.storage.schema import KEYS

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
GRID = ["--ops", "rescale", "--positions", "0-3", "--factors", "0,0.5,2"]  # 1 + 12 rows


def folders(tmp_path: Path, checkpoints: Path | None = None) -> list[str]:
    return ["--checkpoints", str(checkpoints or tmp_path / "ck"), "--reports", str(tmp_path / "rep")]


def train_cli(tmp_path, *extra, checkpoints=None, epochs=1):
    args = ["train", "--quiet", "--shots", "1", "--epochs", str(epochs), *folders(tmp_path, checkpoints), *extra]
    return runner.invoke(app, args)


def corrupt_cli(tmp_path, *extra, checkpoints=None, epochs=1):
    args = ["corrupt", "--quiet", "--shots", "1", "--epochs", str(epochs), *GRID, *folders(tmp_path, checkpoints),
            *extra]  # fmt: skip
    return runner.invoke(app, args)


def assert_one_line_exit_2(result, *expected: str) -> str:
    """Exit code 2 and one line on stderr holding every ``expected`` text; no traceback anywhere."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for text in expected:
        assert text in lines[0], result.output
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    return lines[0]


def run_folder(checkpoints: Path) -> Path:
    (folder,) = [p for p in checkpoints.iterdir() if (p / "config.json").is_file()]
    return folder


def no_temporary_files(*folders: Path) -> bool:
    return not [p for folder in folders for p in folder.rglob("*.tmp")]


def table(tmp_path: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "rep" / name)


# ------------------------------------------------------------------------- item 1/2: custom dataset identity


def write_digit_folder(path: Path, swap: bool) -> Path:
    """Digits 0 and 2 as a folder dataset (classes "zero", "two"); ``swap`` puts each digit's images in the
    other class's folder under the same file names."""
    digits = load_dataset("digits")
    for split, samples in (("train", digits.train), ("test", digits.test)):
        for label in (0, 2):
            folder_label = (2 if label == 0 else 0) if swap else label
            target = path / split / ("zero" if folder_label == 0 else "two")
            target.mkdir(parents=True, exist_ok=True)
            picked = [s for s in samples if s.label == label][: 2 if split == "train" else 20]
            for k, sample in enumerate(picked):
                digits.load_image(sample.source).save(target / f"{k}.png")
    return path


def test_same_named_custom_folders_never_share_a_run(checkpoints_dir, tmp_path):
    first = write_digit_folder(tmp_path / "a" / "ds", swap=False)
    second = write_digit_folder(tmp_path / "b" / "ds", swap=True)
    outputs = []
    for path in (first, second):
        result = train_cli(tmp_path, "--dataset", f"folder:{path}", checkpoints=checkpoints_dir)
        assert result.exit_code == 0, result.output
        assert "reused" not in result.output
        outputs.append(result.output)
    runs = table(tmp_path, "runs")
    assert len(runs) == 2 and runs.run_id.nunique() == 2
    # swapped labels on the same images: the accuracies of the two datasets add up to 100
    zero_shot = runs.zero_shot_acc.tolist()
    assert zero_shot[0] != zero_shot[1] and zero_shot[0] + zero_shot[1] == pytest.approx(100.0)
    config = json.loads((checkpoints_dir / runs.run_id.iloc[0] / "config.json").read_text())
    assert len(config["dataset_fingerprint"]) == 16


def test_built_in_run_ids_do_not_include_an_empty_fingerprint():
    from nemesis_analysis.config import RunConfig

    assert RunConfig().run_id == RunConfig(dataset_fingerprint="").run_id == "3be15d598b22"
    assert RunConfig(dataset_fingerprint="abc").run_id != RunConfig().run_id
    assert RunConfig(allow_missing_classes=True).run_id != RunConfig().run_id


# -------------------------------------------------------------------------------- --allow-missing-classes

SHORT = {"train": {"cat": 2, "dog": 0, "fox": 1}, "test": {"cat": 2, "dog": 2, "fox": 2}}


def test_allow_missing_classes_trains_and_is_recorded(checkpoints_dir, tmp_path):
    path = make_custom_folder(tmp_path / "ds", SHORT, image_size=16)
    refused = train_cli(tmp_path, "--dataset", f"folder:{path}", "--shots", "2", checkpoints=checkpoints_dir)
    assert_one_line_exit_2(refused, "2 of 3 classes of ds have fewer than 2 training images", "dog (0)",
                           "--allow-missing-classes")  # fmt: skip
    result = train_cli(tmp_path, "--dataset", f"folder:{path}", "--shots", "2", "--allow-missing-classes",
                       checkpoints=checkpoints_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    run_id = table(tmp_path, "runs").run_id.iloc[0]
    config = json.loads((checkpoints_dir / run_id / "config.json").read_text())
    assert config["allow_missing_classes"] is True
    split = json.loads((checkpoints_dir / run_id / "split.json").read_text())
    assert sorted(name for _, _, name in split["train"]) == ["cat", "cat", "fox"]


def test_datasets_reports_short_classes_of_a_custom_dataset(tmp_path):
    path = make_custom_folder(tmp_path / "ds", SHORT, image_size=16)
    result = runner.invoke(app, ["datasets", "--dataset", f"folder:{path}", "--shots", "2", "--sample", "0"])
    assert result.exit_code == 0, result.output
    assert "dog (0)" in result.output and "fox (1)" in result.output


# ------------------------------------------------------------------------------------- item 3: --force


def test_force_supersedes_every_row_of_the_old_run(checkpoints_dir, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "features").symlink_to(checkpoints_dir / "features")
    assert train_cli(tmp_path, checkpoints=ck, epochs=2).exit_code == 0
    run = run_folder(ck)
    # The old outcome differs from what a retrain gives: a tampered prompt, and a runs row saying so.
    from safetensors.torch import load_file, save_file

    ctx = load_file(str(run / "prompt.safetensors"))["ctx"]
    noise = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(0))
    save_file({"ctx": noise}, str(run / "prompt.safetensors"))
    assert corrupt_cli(tmp_path, checkpoints=ck, epochs=2).exit_code == 0
    old_acc = table(tmp_path, "corruptions").acc_original.iloc[0]

    forced = train_cli(tmp_path, "--force", checkpoints=ck, epochs=2)
    assert forced.exit_code == 0 and "trained in" in forced.output, forced.output
    assert len(table(tmp_path, "corruptions")) == 0  # rows of the old prompt are gone at once
    assert corrupt_cli(tmp_path, checkpoints=ck, epochs=2).exit_code == 0

    result = json.loads((run / "result.json").read_text())
    runs, corruptions = table(tmp_path, "runs"), table(tmp_path, "corruptions")
    trajectories = table(tmp_path, "trajectories")
    assert len(runs) == 1 and runs.final_test_acc.iloc[0] == result["final_test_acc"]
    assert len(corruptions) == 13 and not corruptions.duplicated(list(KEYS["corruptions"])).any()
    assert not trajectories.duplicated(list(KEYS["trajectories"])).any() and len(trajectories) == 2 * 16
    assert corruptions.acc_original.iloc[0] == pytest.approx(result["final_test_acc"])
    assert corruptions.acc_original.iloc[0] != old_acc


# ------------------------------------------------------------------------ item 4: concurrent processes


def cli_process(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "nemesis_analysis.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_two_corrupt_processes_on_one_untrained_run_write_each_row_once(checkpoints_dir, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "features").symlink_to(checkpoints_dir / "features")
    args = ["corrupt", "--quiet", "--shots", "1", "--epochs", "3", *GRID, "--chunk", "2", *folders(tmp_path, ck)]
    processes = [cli_process(args) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    # both trained or waited for the one run (a run-level lock), then swept under the table's claim
    assert sum("trained in" in out for out, _ in outputs) == 1
    assert sum("reused finished run" in out for out, _ in outputs) == 1
    corruptions, runs = table(tmp_path, "corruptions"), table(tmp_path, "runs")
    assert len(corruptions) == 13 and not corruptions.duplicated(list(KEYS["corruptions"])).any()
    assert len(runs) == 1 and len(table(tmp_path, "trajectories")) == 3 * 16


def test_two_train_processes_on_one_run_train_it_once(checkpoints_dir, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "features").symlink_to(checkpoints_dir / "features")
    args = ["train", "--quiet", "--shots", "1", "--epochs", "3", *folders(tmp_path, ck)]
    processes = [cli_process(args) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert sorted("trained in" in out for out, _ in outputs) == [False, True]
    result = json.loads((run_folder(ck) / "result.json").read_text())
    runs = table(tmp_path, "runs")
    assert len(runs) == 1 and runs.final_test_acc.iloc[0] == result["final_test_acc"]
    assert len(table(tmp_path, "trajectories")) == 3 * 16


# ------------------------------------------------------------------------------- item 9: writability


@pytest.mark.parametrize("which", ["--reports", "--checkpoints"])
def test_a_file_where_a_folder_should_be_is_refused_before_any_work(tmp_path, which):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    target = blocker if which == "--reports" else blocker / "sub"
    other = "--checkpoints" if which == "--reports" else "--reports"
    result = runner.invoke(app, ["train", "--quiet", which, str(target), other, str(tmp_path / "x")])
    assert_one_line_exit_2(result, f"{which} {target}", "not a folder")
    assert blocker.read_text() == "a file" and not (tmp_path / "x").exists()


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a folder no process may write into")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
    result = runner.invoke(app, ["corrupt", "--quiet", "--reports", "/sys/nemesis-reports",
                                 "--checkpoints", str(tmp_path / "ck")])  # fmt: skip
    assert_one_line_exit_2(result, "--reports /sys/nemesis-reports is not writable")
    assert not (tmp_path / "ck").exists()


def full_disk_after(calls: int, real):
    """A writer that works ``calls`` times, then fails as a full disk does."""
    count = {"n": 0}

    def writer(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    return writer


def test_full_disk_mid_sweep_names_the_file_and_keeps_earlier_rows(checkpoints_dir, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from nemesis_analysis.storage import store

    assert train_cli(tmp_path, checkpoints=checkpoints_dir).exit_code == 0
    monkeypatch.setattr(store.pq, "write_table", full_disk_after(1, pq.write_table))
    result = corrupt_cli(tmp_path, "--chunk", "4", checkpoints=checkpoints_dir)
    line = assert_one_line_exit_2(result, "could not write", str(tmp_path / "rep" / "corruptions"),
                                  "No space left on device", "files written before are intact")  # fmt: skip
    assert "part-" in line
    assert len(table(tmp_path, "corruptions")) == 1 + 4  # the baseline and the first chunk, whole
    assert no_temporary_files(tmp_path / "rep")
    monkeypatch.undo()
    assert corrupt_cli(tmp_path, checkpoints=checkpoints_dir).exit_code == 0
    assert len(table(tmp_path, "corruptions")) == 13


def test_full_disk_mid_training_keeps_the_last_saved_state(checkpoints_dir, tmp_path, monkeypatch):
    from nemesis_analysis.storage import rundir

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "features").symlink_to(checkpoints_dir / "features")
    monkeypatch.setattr(rundir, "save_file", full_disk_after(1, rundir.save_file))  # epoch 9 saved, 11 fails
    result = train_cli(tmp_path, checkpoints=ck, epochs=12)
    assert_one_line_exit_2(result, "could not write", "state.safetensors", "No space left on device")
    run = run_folder(ck)
    assert json.loads((run / "state.json").read_text())["epoch"] == 9
    assert no_temporary_files(ck, tmp_path) and not (tmp_path / "rep" / "runs").exists()


# ------------------------------------------------------------------------ items 10, 12, 13: damaged files


def test_garbage_prompt_file_is_named(tmp_path):
    folder = tmp_path / "prompt"
    folder.mkdir()
    (folder / "prompt.safetensors").write_bytes(b"garbage")
    (folder / "prompt.json").write_text("{}")
    result = runner.invoke(app, ["corrupt", "--quiet", "--prompt", str(folder), *folders(tmp_path)])
    assert_one_line_exit_2(result, f"prompt file {folder / 'prompt.safetensors'} is damaged")


@pytest.mark.parametrize("content", ["text", "object"])
def test_weights_that_are_not_plain_tensors_are_refused_in_one_line(tmp_path, content):
    path = tmp_path / "weights.pt"
    if content == "text":
        path.write_text("this is not a weights file\n")
    else:
        torch.save({"model": Path("an object")}, path)
    result = runner.invoke(app, ["train", "--quiet", "--pretrained", str(path), *folders(tmp_path)])
    line = assert_one_line_exit_2(result, f"weights file {path} is not a plain tensor file",
                                  "does not unpickle arbitrary Python objects", "if you trust the file")  # fmt: skip
    assert "weights_only=False" not in line and "Weights only" not in line


def test_coop_checkpoint_holding_objects_is_refused_in_one_line(tmp_path):
    path = tmp_path / "prompt_learner" / "model.pth.tar-5"
    path.parent.mkdir()
    torch.save({"state_dict": {"ctx": torch.zeros(4, 128)}, "extra": Path("an object")}, path)
    result = runner.invoke(app, ["corrupt", "--quiet", "--prompt", str(path), *folders(tmp_path)])
    line = assert_one_line_exit_2(result, f"CoOp checkpoint {path} is not a plain tensor file")
    assert "weights_only=False" not in line


@pytest.fixture
def finished_run(checkpoints_dir, tmp_path):
    """A finished 1-epoch run and its rows in its own checkpoints folder (features shared)."""
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "features").symlink_to(checkpoints_dir / "features")
    assert train_cli(tmp_path, checkpoints=ck).exit_code == 0
    return ck, run_folder(ck)


@pytest.mark.parametrize(
    "damage, command, expected",
    [
        ("truncate-prompt", "corrupt", "prompt.safetensors is damaged"),
        ("prompt-json", "corrupt", "prompt.json is damaged (not valid JSON"),
        ("wrong-shape", "corrupt", "prompt.safetensors is damaged (context of shape (3, 128)"),
        ("result-json", "train", "result.json is damaged (not valid JSON"),
        ("config-json", "corrupt --run", "config.json is damaged (not valid JSON"),
    ],
)
def test_damaged_run_files_are_named_with_the_fix(finished_run, tmp_path, damage, command, expected):
    ck, run = finished_run
    if damage == "truncate-prompt":
        data = (run / "prompt.safetensors").read_bytes()
        (run / "prompt.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "wrong-shape":
        from safetensors.torch import save_file

        save_file({"ctx": torch.zeros(3, 128)}, str(run / "prompt.safetensors"))
    else:
        (run / damage.replace("-json", ".json")).write_text("{ not json")
    before = table(tmp_path, "runs")
    if command == "corrupt --run":
        result = runner.invoke(app, ["corrupt", "--quiet", "--run", run.name, *GRID, *folders(tmp_path, ck)])
    elif command == "corrupt":
        result = corrupt_cli(tmp_path, checkpoints=ck)
    else:
        result = train_cli(tmp_path, checkpoints=ck)
    assert_one_line_exit_2(result, expected, "retrain with --force, or delete the run folder", str(run))
    pd.testing.assert_frame_equal(table(tmp_path, "runs"), before)  # nothing written is lost
    assert not (tmp_path / "rep" / "corruptions").exists() or len(table(tmp_path, "corruptions")) == 0


@pytest.mark.parametrize("damage", ["state-json", "state-tensors"])
def test_damaged_resume_state_is_ignored_with_a_warning(checkpoints_dir, tmp_path, damage, caplog):
    from nemesis_analysis.config import OptimConfig, RunConfig
    from nemesis_analysis.session import Session
    from nemesis_analysis.training.train import train_prompt

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "features").symlink_to(checkpoints_dir / "features")
    session = Session(ck, tmp_path / "rep", device="cpu", progress=False)
    config = RunConfig(shots=1, epochs=3, optim=OptimConfig())
    assert train_prompt(config, session, save_every=1, should_stop=lambda epoch: epoch >= 0).stopped
    run = run_folder(ck)
    name = "state.json" if damage == "state-json" else "state.safetensors"
    (run / name).write_bytes(b"{ garbage")
    with caplog.at_level(logging.WARNING):
        result = train_cli(tmp_path, checkpoints=ck, epochs=3)
    assert result.exit_code == 0, result.output
    assert "resume state" in caplog.text and "training from the start" in caplog.text and name in caplog.text
    assert len(table(tmp_path, "trajectories")) == 3 * 16


# ------------------------------------------------------------------------------------- interruption


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_sigint_during_training_saves_the_epoch_and_the_next_run_resumes(checkpoints_dir, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "features").symlink_to(checkpoints_dir / "features")
    args = ["train", "--quiet", "--shots", "1", "--epochs", "30", *folders(tmp_path, ck)]
    process = cli_process(args)
    wait_for(lambda: any(ck.glob("*/split.json")))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted: run" in lines[0] and "run the same command again to resume" in lines[0]
    run = run_folder(ck)
    state = json.loads((run / "state.json").read_text())
    assert f"saved after {state['epoch'] + 1} of 30 epochs" in lines[0]
    assert state["epoch"] < 29 and "Traceback" not in err
    # Mark the saved rows: a resumed run keeps them, a run from scratch would recompute them.
    for row in state["rows"]:
        row["train_loss"] = 123.0
    (run / "state.json").write_text(json.dumps(state))
    resumed = train_cli(tmp_path, checkpoints=ck, epochs=30)
    assert resumed.exit_code == 0, resumed.output
    trajectories = table(tmp_path, "trajectories")
    assert len(trajectories) == 30 * 16 and not trajectories.duplicated(["epoch", "position"]).any()
    resumed_epochs = trajectories[trajectories.train_loss == 123.0].epoch.unique()
    assert sorted(resumed_epochs) == list(range(state["epoch"] + 1))


def test_sigterm_during_a_sweep_keeps_whole_chunks_and_the_next_run_finishes(checkpoints_dir, tmp_path):
    assert train_cli(tmp_path, checkpoints=checkpoints_dir).exit_code == 0
    grid = ["--ops", "rescale,replace", "--factors", "0,0.5,2,5", "--stds", "0,0.1,1", "--reps", "6"]
    total = 1 + 16 * 4 + 16 * 3 * 6
    args = ["corrupt", "--quiet", "--shots", "1", "--epochs", "1", *grid, *folders(tmp_path, checkpoints_dir)]
    process = cli_process([*args, "--chunk", "1"])
    wait_for(lambda: any((tmp_path / "rep" / "corruptions").glob("part-*.parquet")))
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "new corruption rows of run" in lines[0] and "compute the rest" in lines[0], err
    partial = table(tmp_path, "corruptions")
    assert 1 < len(partial) < total and f"interrupted: {len(partial)} new" in lines[0]
    assert runner.invoke(app, args).exit_code == 0
    final = table(tmp_path, "corruptions")
    assert len(final) == total and not final.duplicated(list(KEYS["corruptions"])).any()


# ------------------------------------------------------------------------------ per-user tiny CLIP cache


def test_tiny_clip_goes_to_the_user_cache_and_an_old_copy_is_still_read(tmp_path, monkeypatch):
    from nemesis_analysis.clip import tiny

    monkeypatch.setenv("NEMESIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny, "pretrain_tiny_clip", lambda recipe, progress: {"w": torch.ones(2)})
    legacy = tiny.tiny_cache_path(tmp_path / "old-ck")
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"an older copy")
    assert tiny.ensure_tiny_clip(tmp_path / "old-ck") == legacy  # no pretraining, no copy
    made = tiny.ensure_tiny_clip(tmp_path / "new-ck")
    assert made == tiny.tiny_cache_path(tmp_path / "cache") and made.is_file()
    assert not (tmp_path / "new-ck").exists()
    assert tiny.ensure_tiny_clip(tmp_path / "third-ck") == made  # shared by every checkpoints folder
    assert oct(made.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_tiny_clip_weights_do_not_depend_on_the_callers_thread_count():
    """One name, one set of weights: pretraining runs on the recipe's thread count whatever the caller set, and
    the cache name changes with everything else the floats depend on (torch, CPU instruction set, threads)."""
    from nemesis_analysis.clip import tiny

    recipe = tiny.TinyRecipe(steps=2, batch_size=64)
    states = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        states.append(tiny.pretrain_tiny_clip(recipe, progress=False))
        assert torch.get_num_threads() == threads  # the caller's count is restored
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(
        states[0]["visual.proj"], tiny.pretrain_tiny_clip(tiny.TinyRecipe(steps=3, batch_size=64), False)["visual.proj"]
    )
    names = {
        tiny.tiny_cache_path(Path("c"), recipe),
        tiny.tiny_cache_path(Path("c"), tiny.TinyRecipe(steps=2, batch_size=64, num_threads=2)),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny, "compute_environment", lambda: {"torch": "0.0", "cpu": "NONE"})
        names.add(tiny.tiny_cache_path(Path("c"), recipe))
    assert len(names) == 3


def test_tiny_clip_local_features_carry_class_signal(tiny_context):
    """The token-level pretraining term: the hand-made prompt classifies test images from the mean of their
    patch tokens' scores far above chance (10 classes), not only from the class token."""
    from nemesis_analysis.clip.features import local_image_features

    loaded, dataset = tiny_context.loaded, tiny_context.dataset
    local, labels = local_image_features(loaded, dataset, dataset.test, None, progress=False)
    text = loaded.encode_texts([dataset.template.format(name) for name in dataset.classnames])  # (classes, embed)
    patch_acc = 100.0 * ((local @ text.T.float()).mean(1).argmax(1) == labels).float().mean().item()
    assert patch_acc > 35.0


# ------------------------------------------------------------------------------ SIGTERM on study run


def test_sigterm_on_study_run_saves_the_epoch_records_the_job_lost_and_exits_143(checkpoints_dir, tmp_path):
    from study_helpers import write_tiny_study

    from nemesis_analysis.study import records

    text = write_tiny_study(tmp_path, checkpoints_dir).read_text()
    text = text.replace("seeds = [1, 2]", "seeds = [1]").replace('methods = ["coop", "pun"]', 'methods = ["coop"]')
    study = tmp_path / "long.toml"
    study.write_text(text.replace("epochs = 2\n", "epochs = 600\n"))  # seconds of training: SIGTERM lands mid-run
    process = cli_process(["study", "run", str(study), "--quiet", "--no-figures"])
    ck = tmp_path / "checkpoints"
    wait_for(lambda: any(ck.glob("*/split.json")))  # training has started
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "stopped by signal 15" in out and "recorded as lost" in out
    state = json.loads((run_folder(ck) / "state.json").read_text())
    assert 0 <= state["epoch"] < 599  # the epoch in flight was saved, not only the last 10-epoch save
    jobs = records.read_job_history(tmp_path / "reports")
    latest = jobs.sort_values("updated").groupby("job_id").last()
    assert latest.loc[[j for j in latest.index if j.startswith("train:")], "state"].tolist() == ["lost"]
    assert not any(j.startswith("corrupt:") and s == "running" for j, s in latest["state"].items())
    resumed = runner.invoke(app, ["study", "run", str(study), "--quiet", "--no-figures"])
    assert resumed.exit_code == 0, resumed.output
    trajectories = pd.read_parquet(tmp_path / "reports" / "trajectories")
    assert len(trajectories) == 600 * 4 and not trajectories.duplicated(["epoch", "position"]).any()


# ------------------------------------------------------------------------------ damaged Parquet parts


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_table_part_is_refused_by_writers_and_skipped_by_readers(tmp_path, damage, caplog):
    from nemesis_analysis.storage import store

    good = {"run_id": "r1", "dataset": "digits", "backbone": "nemesis-tiny", "pretrained": "embedded", "shots": 1,
            "seed": 1, "regularizer": "coop", "n_ctx": 4, "csc": False, "class_token_position": "end", "precision": "fp32",
            "final_test_acc": 70.0, "zero_shot_acc": 50.0, "epochs": 1, "ctx_init": "", "beta": float("nan"),
            "norm_weight": 1.0, "norm_type": "l2", "pan_positions": 1, "pan_factor": 0.0, "omega_schedule": "sigmoid",
            "lr": 0.002, "batch_size": 32, "recipe": "", "mean_norm": 1.0, "checkpoint": "", "seconds": 1.0}  # fmt: skip
    store.append_rows(tmp_path / "rep", "runs", [good])
    written = store.append_rows(tmp_path / "rep", "runs", [{**good, "run_id": "r2", "seed": 2}])
    data = written.read_bytes()
    written.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    # writers: one line naming the part and the fix, exit 2, before any work (no run folder, no rows)
    for args in (
        ["train", "--quiet", "--shots", "1", "--epochs", "1"],
        ["corrupt", "--quiet", "--shots", "1", "--epochs", "1"],
    ):
        result = runner.invoke(app, [*args, *folders(tmp_path)])
        assert result.exit_code == 2, result.output
        assert str(written) in result.output and "move it aside" in result.output and "Traceback" not in result.output
        assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").glob("*/config.json"))
    # readers: the other parts, and a warning naming the damaged one
    with caplog.at_level(logging.WARNING):
        runs = store.read_table(tmp_path / "rep", "runs")
    assert runs.run_id.tolist() == ["r1"] and str(written) in caplog.text
    result = runner.invoke(app, ["summary", "--reports", str(tmp_path / "rep"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert written.read_bytes() == (data[: len(data) // 2] if damage == "truncated" else b"")  # nothing removed
