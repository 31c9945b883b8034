"""One config language: studies speak the run config's (sections, dotted grid axes, the same rules and
words), the CLI's options come from the declarations, and a method declared outside the package shows up
in --help, --print-config, study files and corrupt without editing any other module."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from study_helpers import write_tiny_study
from typer.testing import CliRunner

from nemesis_analysis.cli import app, build_run_config
from nemesis_analysis.config import RunConfig, load_config_file, settings
from nemesis_analysis.fieldspec import positive, spec, validate_fields
from nemesis_analysis.methods import registry
from nemesis_analysis.study.plan import expand_jobs, make_plan
from nemesis_analysis.study.runner import run_study
from nemesis_analysis.study.spec import StudyFileError, load_study

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def kgcoop_study(folder: Path, checkpoints_dir: Path, axis: str) -> Path:
    """The tiny study (2 seeds, coop + pun variants) narrowed to CoOp runs, 1 epoch, no sweep, with a
    [kgcoop] section and a prompt.method axis written as ``axis``."""
    text = write_tiny_study(folder, checkpoints_dir).read_text()
    text = text.replace('methods = ["coop", "pun"]', axis).replace("epochs = 2", "epochs = 1")
    text = text.replace("shots = [2]", "shots = [1]").replace("n_ctx = 4", "n_ctx = 2\n\n[kgcoop]\nweight = 4.0")
    text = text[: text.index("[corrupt]")] + text[text.index("[outputs]") :]
    path = folder / "kg-study.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("axis", ['prompt.method = ["coop", "kgcoop"]', '"prompt.method" = ["coop", "kgcoop"]'])
def test_a_study_grid_takes_run_settings_by_dotted_name(tmp_path, checkpoints_dir, axis):
    path = kgcoop_study(tmp_path, checkpoints_dir, axis)
    result = runner.invoke(app, ["study", "plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    train = [job for job in json.loads(result.output)["jobs"] if job["kind"] == "train"]
    shown = [
        (job["config"]["seed"], job["config"]["prompt"]["method"], job["config"]["kgcoop"]["weight"]) for job in train
    ]
    assert shown == [(1, "coop", 8.0), (1, "kgcoop", 4.0), (2, "coop", 8.0), (2, "kgcoop", 4.0)]
    for job in train:  # the config shown is the run's: it hashes to the job's run id
        assert RunConfig.from_dict(job["config"]).run_id == job["run_id"]
    kg = RunConfig.from_dict(train[1]["config"])
    assert (
        kg.method_options().weight == 4.0
        and kg.run_id != RunConfig.from_dict({**train[1]["config"], "kgcoop": {"weight": 8.0}}).run_id
    )


def test_the_kgcoop_study_runs(tmp_path, checkpoints_dir):
    study = load_study(kgcoop_study(tmp_path, checkpoints_dir, 'prompt.method = ["coop", "kgcoop"]')).with_outputs()
    plan = make_plan(study)
    assert [job.kind for job in plan.todo] == ["encode", "train", "train", "train", "train"]
    report = run_study(plan, plan.todo, "local", progress=False)
    assert not report.failed and len(report.done) == 5
    runs = pd.read_parquet(study.outputs.reports / "runs").sort_values(["seed", "prompt_method"])
    assert list(zip(runs["seed"], runs["prompt_method"])) == [(1, "coop"), (1, "kgcoop"), (2, "coop"), (2, "kgcoop")]
    assert set(runs["run_id"]) == {job.run_id for job in plan.jobs if job.kind == "train"}
    assert not make_plan(study).todo


def test_a_study_files_bad_value_reads_as_the_run_configs(tmp_path, checkpoints_dir):
    path = write_tiny_study(tmp_path, checkpoints_dir, extra="\n[optim]\nmomentum = 1.5\n")
    message = "optim.momentum must lie in [0, 1), got 1.5"
    result = runner.invoke(app, ["study", "plan", str(path)])
    assert result.exit_code == 2 and message in result.output and "flag" not in result.output
    set_result = runner.invoke(app, ["train", "--set", "optim.momentum=1.5", "--print-config"])
    assert set_result.exit_code == 2 and message in set_result.output


def test_impossible_combinations_are_refused_at_plan_time_with_the_grid_point(tmp_path, checkpoints_dir):
    text = write_tiny_study(tmp_path, checkpoints_dir).read_text().replace("n_ctx = 4", "n_ctx = 4\ncsc = true")
    base2new = tmp_path / "base2new.toml"
    base2new.write_text(text.replace("epochs = 2", 'epochs = 2\nprotocol = "base2new"'))
    with pytest.raises(StudyFileError) as error:
        expand_jobs(load_study(base2new))
    assert str(error.value).startswith("grid (digits, nemesis-tiny, 2 shots, seed 1, coop): prompt.csc:")
    plot = tmp_path / "plot.toml"
    plot.write_text(text.replace("epochs = 2", 'epochs = 2\nprompt.method = ["coop", "plot"]'))
    with pytest.raises(StudyFileError) as error:
        expand_jobs(load_study(plot))
    assert str(error.value).startswith(
        "grid (digits, nemesis-tiny, 2 shots, seed 1, coop, prompt.method=plot): prompt.csc"
    )
    result = runner.invoke(app, ["study", "plan", str(plot)])
    assert result.exit_code == 2 and "prompt.method=plot" in result.output


def test_a_method_section_no_grid_point_uses_is_refused(tmp_path, checkpoints_dir):
    path = write_tiny_study(tmp_path, checkpoints_dir, extra="\n[plot]\nnum_prompts = 2\n")
    with pytest.raises(
        StudyFileError, match="plot.num_prompts applies to prompt.method = plot only, and no grid point"
    ):
        expand_jobs(load_study(path))


def test_variants_may_set_any_nemesis_field(tmp_path, checkpoints_dir):
    extra = '\n[variants.pan0]\nbeta = 0.0\npan_factor = 0.0\npan_weight = 50.0\ncsc_reduction = "sum"\n'
    text = write_tiny_study(tmp_path, checkpoints_dir, extra=extra).read_text()
    path = tmp_path / "variants.toml"
    path.write_text(text.replace('methods = ["coop", "pun"]', 'methods = ["pan0"]'))
    configs = [
        RunConfig.from_dict(job.payload["config"]) for job in expand_jobs(load_study(path)) if job.kind == "train"
    ]
    assert {(c.nemesis.beta, c.nemesis.pan_factor, c.nemesis.pan_weight, c.nemesis.csc_reduction.value)
            for c in configs} == {(0.0, 0.0, 50.0, "sum")}  # fmt: skip


# ---------------------------------------------------------------------------------------- the CLI side


def test_print_config_with_a_recipe_is_toml_that_reads_back(tmp_path):
    result = runner.invoke(app, ["train", "--recipe", "paper", "--shots", "2", "--pun", "--print-config"])
    assert result.exit_code == 0
    stdout = result.stdout
    assert "recipe paper:" not in stdout and "recipe paper:" in result.stderr  # the note goes to stderr
    path = tmp_path / "printed.toml"
    path.write_text(stdout)
    expected = build_run_config(recipe="paper", shots=2, pun=True)
    again = build_run_config(given=set(), config_file=path)
    assert again == expected and again.run_id == expected.run_id and again.recipe_changes == expected.recipe_changes
    assert load_config_file(path)["recipe"] == "paper"


def test_set_lists_only_real_keys():
    result = runner.invoke(app, ["train", "--set", "kgcoop.wieght=1"])
    assert result.exit_code == 2
    known = result.output.split("known keys: ")[1]
    assert "kgcoop.weight" in known and "plot.num_prompts" in known
    for recorded in ("METHOD", "SECTION", "recipe_changes", "dataset_fingerprint", "options"):
        assert recorded not in known
    assert set(settings()) == {key.strip() for key in known.replace("\n", "").split(",")}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "nemesis.norm_type=l3"], "nemesis.norm_type: unknown norm type 'l3'; choose one of: l2, l1, inf"),
        (
            ["--norm-type", "l3"],
            "nemesis.norm_type: unknown norm type 'l3'; choose one of: l2, l1, inf (flag --norm-type)",
        ),
        (["--method", "plot", "--csc"], "prompt.csc: prompt method plot learns generic context only"),
        (["--method", "cocoop", "--csc"], "prompt method cocoop learns generic context only"),
    ],
)
def test_refusals_name_the_dotted_field_before_torch_is_imported(args, message):
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom nemesis_analysis.cli import app\n"
        f"result = CliRunner().invoke(app, ['train', *{args!r}])\n"
        "print(result.exit_code, 'torch' in sys.modules)\nprint(result.output)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    first, *output = result.stdout.splitlines()
    assert first.split() == ["2", "False"], result.stdout + result.stderr
    assert message in " ".join(output)


def test_every_flag_comes_from_one_declaration():
    from nemesis_analysis.cli.runoptions import flagged_settings

    command = __import__("typer").main.get_command(app).commands["train"]
    options = {param.name: param for param in command.params}
    for name, setting in flagged_settings().items():
        assert options[name].opts[0] == setting.flags[0].split("/")[0]
        default = getattr(setting.default, "value", setting.default)
        assert options[name].default == default, name
    source = "".join(path.read_text() for path in (ROOT / "nemesis_analysis" / "cli").glob("*.py"))
    for flag in ("--n-ctx", "--norm-weight", "--plot-prompts", "--kg-weight", "--pan-factor", "--class-token-position"):
        assert flag not in source, f"{flag} is spelled in cli/ instead of next to its field"


# -------------------------------------------------------------------------------- a method declared outside


@dataclass
class ToyConfig:
    """A method's options, declared with the method (here: in a test)."""

    SECTION: ClassVar[str] = "toy"
    temperature: float = spec(1.0, check=positive, flag="--toy-temperature", help="divides the toy's logits")

    def __post_init__(self) -> None:
        validate_fields(self)


@pytest.fixture
def toy_method(monkeypatch):
    from nemesis_analysis.methods import base
    from nemesis_analysis.methods.coop import CoOp

    class ToyMethod(CoOp):
        """CoOp whose training logits are divided by a temperature."""

        def __init__(self, loaded, classnames, config, seed=0, options=None):
            super().__init__(loaded, classnames, config, seed=seed)
            self.temperature = (options or ToyConfig()).temperature

        def logits(self, image_features, local_features=None):
            return super().logits(image_features, local_features) / self.temperature

    monkeypatch.setattr(base, "METHODS", dict(base.METHODS))
    monkeypatch.setattr(registry, "DECLARED", dict(registry.DECLARED))
    registry.declare_method(registry.MethodDeclaration("toy", ToyMethod, help="toy", options=ToyConfig))
    return ToyMethod


def test_a_method_declared_elsewhere_is_in_help_print_config_studies_and_corrupt(toy_method, tmp_path, checkpoints_dir):
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--toy-temperature" in help_text and "divides the toy's logits" in help_text
    printed = runner.invoke(app, ["train", "--method", "toy", "--toy-temperature", "2", "--print-config"])
    assert printed.exit_code == 0 and "[toy]\ntemperature = 2.0" in printed.stdout
    assert runner.invoke(app, ["train", "--toy-temperature", "2"]).exit_code == 2  # another method's option
    study = write_tiny_study(tmp_path, checkpoints_dir, extra="\n[toy]\ntemperature = 3.0\n")
    study.write_text(study.read_text().replace("epochs = 2", 'epochs = 2\nprompt.method = ["toy"]'))
    configs = [RunConfig.from_dict(j.payload["config"]) for j in expand_jobs(load_study(study)) if j.kind == "train"]
    assert {(c.prompt_method, c.method_options().temperature) for c in configs} == {("toy", 3.0)}
    args = [
        "corrupt",
        "--method",
        "toy",
        "--toy-temperature",
        "2",
        "--shots",
        "1",
        "--epochs",
        "1",
        "--n-ctx",
        "2",
        "--ops",
        "rescale",
        "--positions",
        "0",
        "--factors",
        "0.5",
        "--device",
        "cpu",
        "--quiet",
        "--checkpoints",
        str(checkpoints_dir),
        "--reports",
        str(tmp_path / "reports"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "reports" / "corruptions")
    assert set(rows["prompt_method"]) == {"toy"} and set(rows["op"]) == {"none", "rescale"}
    run = pd.read_parquet(tmp_path / "reports" / "runs")
    assert list(run["prompt_method"]) == ["toy"]
