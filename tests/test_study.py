"""Study files, plans and shards (no Ray): exact jobs and dependencies, refused keys, done-detection, shards."""

from __future__ import annotations

import dataclasses

import pytest
from study_helpers import write_tiny_study
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.config import NemesisConfig, OptimConfig, PLOTConfig, PromptConfig, RunConfig
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.study import costs, records, spec
from nemesis_analysis.study.plan import expand_jobs, expected_corruption_keys, make_plan, parse_shard, select_jobs
from nemesis_analysis.study.runner import run_study
from nemesis_analysis.study.spec import StudyFileError, load_study, parse_study
from nemesis_analysis.study.template import TEMPLATE

runner = CliRunner()


def _run_id(seed: int, beta: float | None) -> str:
    config = RunConfig(
        dataset="digits", shots=2, seed=seed, backbone="nemesis-tiny", pretrained="embedded", epochs=2,
        prompt=PromptConfig(n_ctx=4), nemesis=NemesisConfig(beta=beta), optim=OptimConfig(),
    )  # fmt: skip
    return config.resolved("cpu").run_id


def test_plan_gives_exactly_the_expected_jobs_and_dependencies(tmp_path):
    study = load_study(write_tiny_study(tmp_path, tmp_path / "none"))
    jobs = expand_jobs(study)
    encode = "encode:digits:nemesis-tiny:embedded:fp32"
    run_ids = [_run_id(seed, beta) for seed in (1, 2) for beta in (None, 1.0)]  # grid order: seeds, then methods
    assert [job.id for job in jobs if job.kind == "encode"] == [encode]
    assert [(job.id, job.deps) for job in jobs if job.kind == "train"] == [(f"train:{r}", (encode,)) for r in run_ids]
    corrupt = [job for job in jobs if job.kind == "corrupt"]
    assert [(job.run_id, job.deps) for job in corrupt] == [(r, (f"train:{r}",)) for r in run_ids]
    assert len(jobs) == 9 and len({job.id for job in jobs}) == 9
    # (op, prompt, pos, factor, rep, layer, eval_classes): a fewshot run is swept on all classes
    keys = {("none", 0, -1, 1.0, 0, 0, "all"), ("rescale", 0, 0, 0.5, 0, 0, "all"), ("rescale", 0, 1, 0.5, 0, 0, "all")}
    assert expected_corruption_keys(corrupt[0]) == keys
    # PLOT's flat positions: the grid spans N * n_ctx, flat p is (prompt p // n_ctx, position p % n_ctx)
    plot_config = RunConfig.from_dict(corrupt[0].payload["config"])
    plot_config = dataclasses.replace(plot_config, prompt=dataclasses.replace(plot_config.prompt, method="plot"),
                                      plot=PLOTConfig(num_prompts=2))  # fmt: skip
    grid = {**corrupt[0].payload["grid"], "positions": None}
    plot_job = dataclasses.replace(corrupt[0], payload={**corrupt[0].payload, "config": plot_config.to_dict(),
                                                        "grid": grid})  # fmt: skip
    plot_keys = expected_corruption_keys(plot_job)
    assert {k[1:3] for k in plot_keys if k[0] == "rescale"} == {(n, m) for n in range(2) for m in range(4)}
    cost = costs.estimate(jobs, records.read_job_history(tmp_path / "reports")).set_index("kind")
    n_test = len(load_dataset("digits").test)
    assert cost.loc["encode", "images_encoded"] == n_test
    # 4 runs x 2 epochs; x 2 shots x 10 classes images seen
    assert (cost.loc["train", "epochs"], cost.loc["train", "train_images"]) == (4 * 2, 4 * 2 * 2 * 10)
    assert cost.loc["corrupt", "variants"] == 4 * 3
    # corrupt.methods narrows the sweeps; evaluate adds one job per run and target, after its train job
    text = (tmp_path / "study.toml").read_text().replace("chunk = 1", 'chunk = 1\nmethods = ["pun"]')
    (tmp_path / "narrow.toml").write_text(text + '\n[evaluate]\ntargets = ["digits"]\n')
    jobs = expand_jobs(load_study(tmp_path / "narrow.toml"))
    assert [job.run_id for job in jobs if job.kind == "corrupt"] == [run_ids[1], run_ids[3]]
    assert [job.deps for job in jobs if job.kind == "evaluate"] == [(f"train:{r}",) for r in run_ids]


@pytest.mark.parametrize(
    "section, key",
    [
        ('[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\nseed = 3\n', "grid.seed: unknown key"),
        ('[grid]\ndatasets = ["digits"]\nshots = [0]\nseeds = [1]\n', "grid.shots[0]: shots must be at least 1, got 0"),
        ('[grid]\ndatasets = ["digitz"]\nshots = [4]\nseeds = [1]\n', "grid.datasets[0]: unknown dataset"),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\nmethods = ["pun2"]\n',
            "grid.methods: unknown method",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n[variants.x]\nbeta = 2.0\n',
            "variants.x: nemesis.beta must lie in [0, 1], got 2.0",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n[optim]\nmomentum = 1.5\n',
            "optim.momentum must lie in [0, 1), got 1.5",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n[nemesis]\npan_factor = -0.1\n',
            "nemesis.pan_factor must be >= 0, got -0.1",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n[nemesis]\nnorm_type = "l3"\n',
            "nemesis.norm_type: unknown norm type 'l3'; choose one of: l2, l1, inf",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n[kgcoop]\nwieght = 1.0\n',
            "unknown config key 'kgcoop.wieght'",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\nprompt.method = ["coop", "promptsrc"]\n',
            "grid.prompt.method[1]: prompt.method: unknown prompt method 'promptsrc'",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n"nemesis.weight" = [1.0, -2.0]\n',
            "grid.nemesis.weight[1]: nemesis.weight must be >= 0, got -2.0",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\nnemesis.wieght = [1.0]\n',
            "grid.nemesis.wieght: unknown key",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n[resources]\nnum_gpu = 1\n',
            "resources.num_gpu: unknown key",
        ),
        (
            '[grid]\ndatasets = ["digits"]\nshots = [4]\nseeds = [1]\n[corrupt]\nfactors = "0.5"\n',
            "corrupt.factors: must be a list",
        ),
        ('[grids]\ndatasets = ["digits"]\n', "grids: unknown section"),
    ],
)
def test_bad_study_files_are_refused_by_dotted_key(tmp_path, section, key):
    with pytest.raises(StudyFileError) as error:
        parse_study(spec.tomllib.loads(section))
    assert str(error.value).startswith(key) and "\n" not in str(error.value)
    path = tmp_path / "bad.toml"
    path.write_text(section)
    result = runner.invoke(app, ["study", "plan", str(path)])
    assert result.exit_code == 2 and key in result.output


def test_init_writes_a_template_that_plans_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "new.toml"
    assert runner.invoke(app, ["study", "init", str(path)]).exit_code == 0
    assert path.read_text() == TEMPLATE
    study = load_study(path)
    assert (study.grid.datasets, study.grid.seeds, study.grid.methods) == (("digits",), (1, 2), ("coop", "pun"))
    assert [job.kind for job in expand_jobs(study)].count("corrupt") == 4
    result = runner.invoke(app, ["study", "init", str(path)])
    assert result.exit_code == 2 and "--force" in result.output


def test_parse_shard():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_shards_cover_every_job_once_and_plan_counts_a_partial_run(tmp_path, tiny_session, checkpoints_dir):
    study = load_study(write_tiny_study(tmp_path, checkpoints_dir)).with_outputs()
    plan = make_plan(study)
    assert len(plan.todo) == 9 and not plan.done
    for total in (2, 3):
        shards = [{job.id for job in select_jobs(plan, (i, total))} for i in range(total)]
        assert sum(len(s) for s in shards) == 9 and set().union(*shards) == {job.id for job in plan.jobs}

    first = run_study(plan, select_jobs(plan, (0, 2)), "local", progress=False)
    after = make_plan(study)  # plan after a partial run: exactly what shard 0 finished is done
    assert after.done == set(first.done) and len(after.todo) == 9 - len(first.done)
    assert not first.failed and len(first.done) + len(first.waiting) == len(select_jobs(plan, (0, 2)))
    second = run_study(after, select_jobs(after, (1, 2)), "local", progress=False)
    last = make_plan(study)
    third = run_study(last, select_jobs(last, (0, 2)), "local", progress=False)
    final = make_plan(study)
    assert final.done == {job.id for job in plan.jobs} and not final.todo
    ran = [*first.done, *second.done, *third.done]
    assert sorted(ran) == sorted(job.id for job in plan.jobs)  # every job ran, and only once
    history = records.read_job_history(study.outputs.reports)
    assert history[history["state"] == "running"]["job_id"].value_counts().max() == 1
    result = runner.invoke(app, ["study", "status", str(study.path), "--json"])
    assert result.exit_code == 0 and '"todo": 0' in result.output and '"done": 4' in result.output


def test_help_of_every_study_command():
    result = runner.invoke(app, ["study", "--help"])
    assert result.exit_code == 0 and all(name in result.output for name in ("init", "plan", "run", "status"))
    result = runner.invoke(app, ["study", "run", "--help"])
    assert result.exit_code == 0
    assert all(flag in result.output for flag in ("--executor", "--address", "--max-parallel", "--shard"))
    for command in ("init", "plan", "status"):
        assert runner.invoke(app, ["study", command, "--help"]).exit_code == 0


def test_evaluate_jobs_record_each_trained_prompt_on_its_targets(tmp_path, tiny_session, checkpoints_dir):
    """An [evaluate] section adds one job per run and target; evaluating a prompt on its own dataset gives
    exactly the run's final test accuracy, and a rerun has nothing left to do."""
    import pandas as pd

    extra = '\n[evaluate]\ntargets = ["digits"]\nclasses = "all"\n'
    text = write_tiny_study(tmp_path, checkpoints_dir).read_text().replace("seeds = [1, 2]", "seeds = [1]")
    path = tmp_path / "study-eval.toml"
    path.write_text(text.replace('methods = ["coop", "pun"]', 'methods = ["coop"]') + extra)
    study = load_study(path).with_outputs()
    plan = make_plan(study)
    assert [job.kind for job in plan.todo].count("evaluate") == 1
    report = run_study(plan, plan.todo, "local", progress=False)
    assert not report.failed
    runs = pd.read_parquet(study.outputs.reports / "runs")
    evaluations = pd.read_parquet(study.outputs.reports / "evaluations")
    assert len(evaluations) == 1 and evaluations["eval_dataset"].iloc[0] == "digits"
    assert evaluations["acc"].iloc[0] == pytest.approx(runs["final_test_acc"].iloc[0], abs=1e-9)
    assert not make_plan(study).todo


# ------------------------------------------------------------------------------------- protocols, datasets


def _one_run_study(tmp_path, checkpoints_dir, grid_extra: str = "", datasets: str = '["digits"]'):
    text = write_tiny_study(tmp_path, checkpoints_dir, datasets=datasets).read_text()
    text = text.replace("seeds = [1, 2]", "seeds = [1]").replace('methods = ["coop", "pun"]', 'methods = ["coop"]')
    path = tmp_path / "one-run.toml"
    path.write_text(text.replace("epochs = 2\n", f"epochs = 2\n{grid_extra}"))
    return load_study(path).with_outputs()


def test_a_base2new_study_sweeps_base_and_new_classes_as_the_command_does(tmp_path, tiny_session, checkpoints_dir):
    import pandas as pd

    from nemesis_analysis.corruption.ops import GridSpec
    from nemesis_analysis.corruption.sweep_runs import sweep_runs

    study = _one_run_study(tmp_path, checkpoints_dir, 'protocol = "base2new"\n')
    plan = make_plan(study)
    report = run_study(plan, plan.todo, "local", progress=False)
    assert not report.failed, report.failed
    rows = pd.read_parquet(study.outputs.reports / "corruptions")
    assert rows.groupby("eval_classes").size().to_dict() == {"base": 3, "new": 3}  # baseline + 2 positions each
    assert not make_plan(study).todo  # done means both subsets are there
    # `nemesis corrupt --run` on the same run, into another reports folder: the same rows
    session = tiny_session.replace(checkpoints_dir=study.outputs.checkpoints, reports_dir=tmp_path / "by-command")
    sweep_runs(
        RunConfig(), session, GridSpec(ops=("rescale",), positions=(0, 1), factors=(0.5,)), run_id=rows.run_id.iloc[0]
    )
    command = pd.read_parquet(tmp_path / "by-command" / "corruptions")
    key = ["eval_classes", "op", "position", "factor"]
    assert (
        command.sort_values(key)[[*key, "acc"]].values.tolist() == rows.sort_values(key)[[*key, "acc"]].values.tolist()
    )


def test_a_folder_dataset_runs_in_a_study(tmp_path, tiny_session, checkpoints_dir):
    """The planned run id carries the dataset's fingerprint, as training does: train and corrupt both run."""
    import pandas as pd
    from test_reliability import write_digit_folder

    folder = write_digit_folder(tmp_path / "ds", swap=False)
    study = _one_run_study(tmp_path, checkpoints_dir, datasets=f'["folder:{folder}"]')
    plan = make_plan(study)
    train = next(job for job in plan.jobs if job.kind == "train")
    assert len(RunConfig.from_dict(train.payload["config"]).dataset_fingerprint) == 16
    report = run_study(plan, plan.todo, "local", progress=False)
    assert not report.failed and not report.waiting and len(report.done) == 3  # encode, train, corrupt
    assert set(pd.read_parquet(study.outputs.reports / "runs").run_id) == {train.run_id}
    assert not make_plan(study).todo


def test_an_empty_shard_is_refused_and_says_shards_count_from_zero(tmp_path, checkpoints_dir):
    path = write_tiny_study(tmp_path, checkpoints_dir)
    result = runner.invoke(app, ["study", "run", str(path), "--shard", ""])
    assert result.exit_code == 2 and "must be I/N" in result.output and "SLURM_ARRAY_TASK_ID - 1" in result.output


def test_job_ids_ending_in_new_print_as_text_not_emoji():
    from nemesis_analysis.cli.options import console, err_console

    for out in (console, err_console):
        with out.capture() as captured:
            out.print("failed evaluate:abc:new: boom", highlight=False)  # any print, markup or not
        assert captured.get() == "failed evaluate:abc:new: boom\n"  # rich's default: "failed evaluate🔤new: boom"
