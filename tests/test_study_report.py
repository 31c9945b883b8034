"""The paper's study files, smoke mode and the one-file HTML report: plan counts without the data, the smoke
mapping, a smoke run of the base-to-new study end to end, and an HTML file that loads nothing external and
holds the tables' numbers, the figures and the manifest."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from nemesis_analysis import stats
from nemesis_analysis.cli import app
from nemesis_analysis.report import html, paper, seeds, tables
from nemesis_analysis.storage import store
from nemesis_analysis.study.plan import expand_jobs, make_plan
from nemesis_analysis.study.smoke import smoke_study
from nemesis_analysis.study.spec import load_study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def _plan_json(name: str) -> dict:
    result = runner.invoke(app, ["study", "plan", str(EXAMPLES / name), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_paper_base2new_plans_231_cocoop_runs_without_the_data():
    data = _plan_json("paper-base2new.toml")
    train = [job for job in data["jobs"] if job["kind"] == "train"]
    assert len(train) == 231 and len({job["run_id"] for job in train}) == 231
    configs = [job["config"] for job in train]
    assert {c["prompt"]["method"] for c in configs} == {"cocoop"}
    assert {(c["backbone"], c["shots"], c["epochs"], c["optim"]["batch_size"], c["protocol"]) for c in configs} == {
        ("ViT-B-16", 16, 10, 1, "base2new")
    }
    assert len({c["dataset"] for c in configs}) == 11 and {c["seed"] for c in configs} == {1, 2, 3}
    variants = {
        (c["nemesis"]["beta"], c["nemesis"]["weight"] if c["nemesis"]["beta"] is not None else None) for c in configs
    }
    assert variants == {(None, None), *((beta, w) for beta in (1.0, 0.0) for w in (1.0, 10.0, 20.0))}
    assert sum(1 for job in data["jobs"] if job["kind"] == "corrupt") == 231
    # no data here: the plan names each dataset folder it would read
    assert len(data["missing_data"]) == 11 and all("/shared/data/" in line for line in data["missing_data"])


def test_paper_dg_plans_15_train_and_60_evaluate_jobs():
    data = _plan_json("paper-dg.toml")
    kinds = pd.Series([job["kind"] for job in data["jobs"]]).value_counts().to_dict()
    assert kinds == {"encode": 1, "train": 15, "evaluate": 60}
    targets = {job["id"].split(":")[2] for job in data["jobs"] if job["kind"] == "evaluate"}
    assert targets == {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
    assert {line.split(":")[0] for line in data["missing_data"]} == {"imagenet", *targets}


def test_smoke_maps_a_study_onto_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = load_study(EXAMPLES / "paper-dg.toml")
    smoke = smoke_study(study)
    assert smoke.outputs.checkpoints == tmp_path / "smoke" / "paper-dg" / "checkpoints"
    assert smoke.outputs.reports == tmp_path / "smoke" / "paper-dg" / "reports"
    assert (smoke.outputs.device, smoke.resources.num_gpus, smoke.outputs.offline) == ("cpu", 0.0, True)
    jobs = expand_jobs(smoke)
    configs = [job.payload["config"] for job in jobs if job.kind == "train"]
    assert len(configs) == 5  # every variant, one seed
    assert {
        (c["dataset"], c["backbone"], c["pretrained"], c["seed"], c["epochs"], c["protocol"], c["shots"])
        for c in configs
    } == {("digits", "nemesis-tiny", "embedded", 1, 2, "fewshot", 4)}
    assert {job.kind for job in jobs} == {"encode", "train", "evaluate"}
    assert {job.payload["target"] for job in jobs if job.kind == "evaluate"} == {"digits"}
    # --checkpoints / --reports win over ./smoke
    other = smoke_study(study, checkpoints=tmp_path / "c", reports=tmp_path / "r")
    assert (other.outputs.checkpoints, other.outputs.reports) == (tmp_path / "c", tmp_path / "r")


def test_t_interval_and_seed_summary_known_values():
    low, high = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3.0)  # t(0.975, df=2) x sem (sample std 1)
    assert low == pytest.approx(2.0 - half) and high == pytest.approx(2.0 + half)
    assert all(math.isnan(v) for v in stats.t_interval([5.0]))
    per_seed = pd.DataFrame(
        {"row": ["a"] * 3 + ["b"], "column": ["x"] * 4, "seed": [1, 2, 3, 1], "value": [1.0, 2.0, 3.0, 7.0]}
    )
    summary = seeds.seed_summary(per_seed).set_index("row")
    assert summary.loc["a", ["seed 1", "seed 2", "seed 3", "n", "mean", "std"]].tolist() == [1.0, 2.0, 3.0, 3, 2.0, 1.0]
    assert (
        summary.loc["b", "n"] == 1 and math.isnan(summary.loc["b", "seed 2"]) and math.isnan(summary.loc["b", "ci_low"])
    )


def test_comparison_flags_values_read_off_a_plot_and_the_omega_mapping():
    rows = [*paper.PAPER_DATASETS, "average"]  # the paper's dataset set: its average is comparable
    fewshot = tables.ResultTable(
        "fewshot", "t", rows, ["coop 1-shot"], keys={"coop 1-shot": ("coop", "coop", math.nan, 1)}
    )
    fewshot.cells[("average", "coop 1-shot")] = tables.Cell(60.0, math.nan, 1)
    view = html.comparison_view(tables.compare_paper(fewshot))
    (line,) = view["lines"]
    assert (line["paper"], line["delta"], line["flags"]) == ("59.20", "0.80", html.READ_OFF_PLOT_MARK)
    base2new = tables.ResultTable("base2new", "t", rows, ["nemesis-pan (weight 20) H"],
                                  keys={"nemesis-pan (weight 20) H": ("cocoop", "nemesis-pan", 20.0, "H")})  # fmt: skip
    base2new.cells[("average", "nemesis-pan (weight 20) H")] = tables.Cell(70.0, math.nan, 1)
    (line,) = html.comparison_view(tables.compare_paper(base2new))["lines"]
    assert (line["paper"], line["delta"], line["flags"]) == ("77.00", "-7.00", html.OMEGA_MARK)


class _Page(HTMLParser):
    """Every tag with its attributes, and the text of each table row of each table class."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: dict[str, list[list[str]]] = {}
        self.table_class, self.row, self.cell = "", None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self.table_class = attrs.get("class", "")
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append(self.cell.strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.rows.setdefault(self.table_class, []).append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def test_smoke_run_of_paper_base2new_and_its_report(tmp_path, monkeypatch, checkpoints_dir):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["study", "run", str(EXAMPLES / "paper-base2new.toml"), "--smoke", "--quiet"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "smoke" / "paper-base2new"
    path = root / "reports" / "studies" / "paper-base2new" / "report.html"
    assert result.output.strip().splitlines()[-1] == f"report: {path}"
    smoke = smoke_study(load_study(EXAMPLES / "paper-base2new.toml"))
    plan = make_plan(smoke)
    assert len(plan.done) == len(plan.jobs) == 1 + 7 + 7  # encode, 7 variants trained and swept
    corruptions = store.read_table(root / "reports", "corruptions")
    assert set(corruptions["eval_classes"]) == {"base", "new"} and corruptions["run_id"].nunique() == 7

    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert len(text.encode()) > 20_000
    links = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href") and v]
    assert links and all(v.startswith(("#", "data:")) for v in links), links  # nothing external
    assert not [a for tag, a in page.tags if tag in ("script", "link", "iframe")]
    assert sum(1 for tag, a in page.tags if tag == "img" and a["src"].startswith("data:image/png;base64,")) >= 3

    runs, evaluations = store.read_table(root / "reports", "runs"), store.read_table(root / "reports", "evaluations")
    table = tables.compare_paper(tables.build("base2new", runs, evaluations))
    lines = {(r[0], r[1]): r for r in page.rows["paper"][1:]}
    cocoop_h = table.cell("average", "cocoop H")  # digits against the paper's 11 datasets: no difference, and why
    assert lines[("average", "cocoop H")][2:6] == [f"{cocoop_h.mean:.2f}", "1", "76.50", f"– ({cocoop_h.paper_note})"]
    assert "other datasets: ours digits" in cocoop_h.paper_note
    ours = {r[0]: r[1:] for r in page.rows["ours"][1:]}
    for i, column in enumerate(table.columns):
        assert ours["digits"][i].startswith(f"{table.cell('digits', column).mean:.2f}")
    per_seed = {(r[0], r[1]): r for r in page.rows["seeds"][1:]}  # dataset, column, seed 1, n, mean ± std, interval
    assert per_seed[("digits", "cocoop B")][2] == f"{table.cell('digits', 'cocoop B').mean:.2f}"

    assert f"<td>{metadata.version('torch')}</td>" in text and metadata.version("open_clip_torch") in text
    assert all(run_id in text for run_id in runs["run_id"])
    assert "embedded:" in text and "sha256:" in text and "git commit" in text
    assert html.OMEGA_MARK in text and "not confirmed" in text and "Smoke run" in text
