"""CLI surface: --help of every command, shared options parsed identically, config files and --set,
and validation before anything heavy is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nemesis_analysis.cli import app, build_run_config
from nemesis_analysis.cli import training as training_commands
from nemesis_analysis.config import NemesisConfig, OptimConfig, PromptConfig, RunConfig
from nemesis_analysis.corruption.ops import DEFAULT_STDS
from nemesis_analysis.session import Session

runner = CliRunner()


def command_paths(command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the app, as argument paths (``("plot", "norms")``)."""
    paths = [prefix]
    if hasattr(command, "commands"):
        for name, sub in sorted(command.commands.items()):
            paths += command_paths(sub, prefix + (name,))
    return paths


COMMANDS = command_paths(typer.main.get_command(app))
ENVIRONMENT = ["--checkpoints", "--reports", "--data-root", "--device", "--offline", "--cache-dir", "--quiet"]
RUN_OPTIONS = [
    "--dataset",
    "--shots",
    "--seed",
    "--backbone",
    "--config",
    "--set",
    "--print-config",
    "--csc / --no-csc",
    "--norm-weight, --alpha",
    "--beta",
    "--pan-factor",
    "--lr",
]
KEY_OPTIONS = {
    ("train",): RUN_OPTIONS + ENVIRONMENT + ["--force", "--protocol"],
    ("corrupt",): RUN_OPTIONS
    + ENVIRONMENT
    + [
        "--run",
        "--prompt",
        "--seeds",
        "--ops",
        "--positions",
        "--protocol",
        "0,0.001,0.01,0.1,0.5,0.9,1.1,2,5,10",
        "0,0.0001,0.001,0.01,0.02,0.05,0.1,0.5,1",
    ],
    ("demo",): ["--checkpoints", "--reports", "--device", "--quiet"],
    ("summary",): ["--reports", "--out", "--min-delta", "--fdr", "--compare-to"],
    ("fill-counts",): ["--run", "--checkpoints", "--reports", "--device"],
    ("datasets",): ["--data-root", "--sample", "--quiet", "Exit code 0 whatever it finds"],
    ("models",): ["--filter", "--checkpoints", "--cache-dir"],
    ("plot", "frequency"): ["--reports", "--out", "--format", "--fdr", "--min-delta"],
    ("plot", "trajectory"): ["--reports", "--dataset", "--shots", "--seed"],
    ("plot", "heatmap"): ["--reports", "--dataset", "--shots", "--fdr"],
    ("plot", "norms"): ["--reports", "--run"],
    ("plot", "base-new"): ["--reports", "--out", "--format", "--min-delta"],
    ("evaluate",): ["--run", "--prompt", "--dataset", "--classes", *ENVIRONMENT],
    ("study", "init"): ["--force"],
    ("study", "plan"): ["--json", "--checkpoints", "--reports", "--smoke"],
    ("study", "run"): [
        "--executor",
        "--address",
        "--max-parallel",
        "--shard",
        "--figures",
        "--checkpoints",
        "--reports",
        "--smoke",
    ],
    ("study", "status"): ["--json", "--checkpoints", "--reports", "--smoke"],
    ("study", "report"): ["--checkpoints", "--reports", "--smoke"],
}
GROUPS = {("plot",), ("study",)}


def test_every_command_has_key_options_listed():
    leaves = {path for path in COMMANDS if path and path not in GROUPS}
    assert leaves == set(KEY_OPTIONS)  # a new command must say which options it must show


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "nemesis")
def test_help_of_every_command(path):
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output
    assert "<bool>" not in result.output
    for option in KEY_OPTIONS.get(path, []):
        assert option in result.output, f"{' '.join(path)} --help lacks {option}"


def test_help_defaults_are_the_config_defaults():
    command = typer.main.get_command(app).commands["train"]
    defaults = {param.name: param.default for param in command.params}
    config = RunConfig()
    assert (defaults["dataset"], defaults["shots"], defaults["seed"], defaults["backbone"]) == (
        config.dataset,
        config.shots,
        config.seed,
        config.backbone,
    )
    assert (defaults["n_ctx"], defaults["csc"], defaults["class_token_position"]) == (
        PromptConfig().n_ctx,
        PromptConfig().csc,
        PromptConfig().class_token_position.value,
    )
    nemesis, optim = NemesisConfig(), OptimConfig()
    assert (
        defaults["norm_weight"],
        defaults["norm_type"],
        defaults["pan_positions"],
        defaults["pan_factor"],
        defaults["omega"],
    ) == (nemesis.weight, nemesis.norm_type.value, nemesis.pan_positions, nemesis.pan_factor, nemesis.omega.value)
    assert (defaults["lr"], defaults["batch_size"]) == (optim.lr, optim.batch_size)


# ------------------------------------------------------------- shared options parsed identically


SHARED = [
    "--dataset",
    "digits",
    "--shots",
    "4",
    "--seed",
    "3",
    "--n-ctx",
    "8",
    "--csc",
    "--class-token-position",
    "middle",
    "--beta",
    "0.5",
    "--alpha",
    "2",
    "--norm-type",
    "l1",
    "--pan-positions",
    "2",
    "--pan-factor",
    "0.2",
    "--omega",
    "constant",
    "--lr",
    "0.01",
    "--batch-size",
    "16",
    "--epochs",
    "3",
    "--checkpoints",
    "/tmp/ck",
    "--reports",
    "/tmp/rep",
    "--data-root",
    "/tmp/data",
    "--device",
    "cpu",
    "--offline",
    "--cache-dir",
    "/tmp/cache",
    "--quiet",
]
EXPECTED_CONFIG = RunConfig(
    dataset="digits", shots=4, seed=3, epochs=3,
    prompt=PromptConfig(n_ctx=8, csc=True, class_token_position="middle"),
    nemesis=NemesisConfig(beta=0.5, weight=2.0, norm_type="l1", pan_positions=2, pan_factor=0.2, omega="constant"),
    optim=OptimConfig(lr=0.01, batch_size=16),
)  # fmt: skip
EXPECTED_SESSION = Session(
    checkpoints_dir=Path("/tmp/ck"),
    reports_dir=Path("/tmp/rep"),
    device="cpu",
    offline=True,
    data_root=Path("/tmp/data"),
    weights_cache_dir=Path("/tmp/cache"),
    progress=False,
)


class Calls:
    def __init__(self):
        self.calls = []

    def training(self, config, session, *, force):
        self.calls.append(("train", config, session, dict(force=force)))
        raise typer.Exit(0)

    def sweep(self, config, session, grid, **kwargs):
        self.calls.append(
            (
                "corrupt",
                config,
                session,
                dict(grid=grid, **{k: kwargs[k] for k in ("seeds", "prompt", "chunk", "force")}),
            )
        )
        return []


@pytest.fixture
def calls(monkeypatch):
    recorder = Calls()
    monkeypatch.setattr(training_commands, "run_training", recorder.training)
    monkeypatch.setattr(training_commands, "run_sweep", recorder.sweep)
    return recorder


def test_train_and_corrupt_parse_shared_options_identically(calls):
    assert runner.invoke(app, ["train", *SHARED, "--force"]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "corrupt",
            *SHARED,
            "--force",
            "--ops",
            "rescale",
            "--positions",
            "0-2",
            "--factors",
            "0,2",
            "--seeds",
            "1,2",
            "--chunk",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    (_, train_config, train_session, train_kw), (_, corrupt_config, corrupt_session, corrupt_kw) = calls.calls
    assert train_config == corrupt_config == EXPECTED_CONFIG
    assert train_config.run_id == EXPECTED_CONFIG.run_id
    assert train_session == corrupt_session == EXPECTED_SESSION
    assert train_kw == {"force": True}
    grid = corrupt_kw.pop("grid")
    assert corrupt_kw == {"seeds": (1, 2), "prompt": None, "chunk": 5, "force": True}
    assert (grid.ops, grid.factors, grid.stds, grid.reps) == (("rescale",), (0.0, 2.0), DEFAULT_STDS, 3)
    assert sorted({c.position for c in grid.expand(16) if c.op != "none"}) == [0, 1, 2]


def test_defaults_give_the_default_config_and_session(calls, monkeypatch):
    monkeypatch.delenv("NEMESIS_DEVICE")  # the suite's CPU default (conftest) is not the command's default
    assert runner.invoke(app, ["train"]).exit_code == 0
    assert runner.invoke(app, ["corrupt"]).exit_code == 0
    for _, config, session, _ in calls.calls:
        assert config == RunConfig() and session == Session()


def test_precedence_defaults_file_flags_set(calls, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('shots = 4\nbackbone = "nemesis-tiny"\n[nemesis]\nbeta = 0.5\nweight = 3.0\n[optim]\nlr = 0.01\n')
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(path),
            "--shots",
            "2",
            "--alpha",
            "2",
            "--set",
            "nemesis.weight=5",
            "--set",
            "optim.batch_size=8",
        ],
    )
    assert result.exit_code == 0, result.output
    ((_, config, _, _),) = calls.calls
    # file: shots 4, beta 0.5, weight 3, lr 0.01; flags: shots 2, weight 2; --set: weight 5, batch 8.
    assert (config.shots, config.nemesis.beta, config.nemesis.weight, config.optim.lr, config.optim.batch_size) == (
        2,
        0.5,
        5.0,
        0.01,
        8,
    )
    assert config.prompt == PromptConfig() and config.seed == 1  # untouched fields keep their defaults


def test_print_config_prints_resolved_toml_and_trains_nothing(calls, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("shots = 4\n[nemesis]\nbeta = 1.0\n")
    result = runner.invoke(app, ["train", "--config", str(path), "--set", "optim.lr=0.005", "--print-config"])
    assert result.exit_code == 0, result.output
    assert calls.calls == []
    printed = tmp_path / "printed.toml"
    printed.write_text(result.output)
    expected = RunConfig(shots=4, nemesis=NemesisConfig(beta=1.0), optim=OptimConfig(lr=0.005))
    resolved = build_run_config(given=set(), config_file=printed)  # the printed TOML reads back as the same run
    assert resolved == expected and resolved.run_id == expected.run_id


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "nemesis.gamma=1"], "unknown config key 'nemesis.gamma'"),
        (["--set", "optim.lr=nan"], "optim.lr must be a finite number, got nan (flag --lr)"),
        (["--set", "optim.warmup_lr=0"], "optim.warmup_lr must be positive, got 0.0"),
        (["--pan-factor", "inf"], "nemesis.pan_factor must be a finite number, got inf (flag --pan-factor)"),
        (["--config", "/no/such/run.toml"], "config file /no/such/run.toml not found"),
    ],
)
def test_config_errors_are_one_line_with_the_flag(calls, args, message):
    result = runner.invoke(app, ["corrupt", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert calls.calls == []


def test_config_file_error_names_the_dotted_key(calls, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[optim]\nmomentum = 1.5\n")
    result = runner.invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2 and "optim.momentum must lie in [0, 1), got 1.5" in result.output


@pytest.mark.parametrize("args", [["train", "--shots", "0"], ["corrupt", "--lr", "nan"], ["train", "--set", "x=1"]])
def test_bad_values_are_refused_before_torch_is_imported(args):
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom nemesis_analysis.cli import app\n"
        f"result = CliRunner().invoke(app, {args!r})\n"
        "print(result.exit_code, 'torch' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr


def test_corrupt_run_sweeps_an_existing_run_with_its_own_config(calls, tmp_path):
    trained = RunConfig(shots=2, seed=7, nemesis=NemesisConfig(beta=0.0), epochs=3)
    run_dir = tmp_path / trained.run_id
    run_dir.mkdir()
    (run_dir / "config.json").write_text(__import__("json").dumps(trained.to_dict()))
    result = runner.invoke(app, ["corrupt", "--run", trained.run_id[:6], "--checkpoints", str(tmp_path)])
    assert result.exit_code == 0, result.output
    ((_, config, session, _),) = calls.calls
    assert config == trained and config.run_id == trained.run_id and session.checkpoints_dir == tmp_path
    missing = runner.invoke(app, ["corrupt", "--run", "ffffff", "--checkpoints", str(tmp_path)])
    assert missing.exit_code == 2 and "no run 'ffffff'" in missing.output
    clash = runner.invoke(app, ["corrupt", "--run", trained.run_id, "--shots", "4", "--checkpoints", str(tmp_path)])
    assert clash.exit_code == 2 and "sweeps the run with its own config; drop --shots" in clash.output
    assert len(calls.calls) == 1
