"""The commented study-file template that ``nemesis study init`` writes (it runs as is on the embedded default)."""

from __future__ import annotations

from pathlib import Path

from nemesis_analysis.storage.fsio import atomic_write_text
from nemesis_analysis.study.spec import StudyFileError

TEMPLATE = """\
# A nemesis study: a grid of runs, what to do with each, where results go, and what each job needs.
# Check it with `nemesis study plan THIS_FILE`; run it with `nemesis study run THIS_FILE`.
# Unknown keys and bad values are refused (by their dotted name) before anything runs.

[study]
name = "my-study"                  # letters, digits, . _ - ; summaries go to <reports>/studies/<name>/
description = ""

[grid]                             # every combination is one trained run
datasets = ["digits"]              # digits (embedded), CoOp datasets (caltech101, ...), folder:PATH, manifest:PATH
shots = [4]                        # training images per class
seeds = [1, 2]
backbones = ["nemesis-tiny"]       # or [{ name = "RN50", pretrained = "openai" }]; default tag: embedded / openai
methods = ["coop", "pun"]          # coop, pun, pan, betaB (e.g. beta0.5), or a [variants.NAME] below
protocol = "fewshot"               # fewshot, base2new, crossdataset or dg (see README, Protocols)
# precision = "fp32"               # fp32, amp or fp16; default: amp when jobs hold a GPU, else fp32
epochs = 5                         # default: CoOp's epochs for the shot count (50/100/100/200/200)
# recipe = "paper"                 # coop, paper or cocoop (see `nemesis train --help`)
# prompt.method = ["coop", "kgcoop"]  # any run setting by its dotted name is an axis (see docs/config.md)

[prompt]                           # the run sections are a run file's ([prompt], [nemesis], [optim], [plot], [kgcoop])
n_ctx = 8                          # context vectors M
# csc = false                      # class-specific context
# class_token_position = "end"     # end, middle or front
# ctx_init = "a photo of a"

# [optim]                          # CoOp's recipe by default
# lr = 0.002
# batch_size = 32

# [kgcoop]                         # a method's options apply to that method's runs only
# weight = 4.0

# [variants.pun-strong]            # a named Nemesis setting (any nemesis.* field), usable in grid.methods
# beta = 1.0                       # 1 = PUN, 0 = PAN, in between = a mix
# weight = 2.0                     # the norm-loss weight (--alpha)
# norm_type = "l2"                 # l2, l1 or inf
# pan_positions = 1
# pan_factor = 0.1
# omega = "sigmoid"                # sigmoid or constant

[corrupt]                          # sweep each trained prompt; leave the section out for no sweep
# grid = "default"                 # default (rescale + replace), rescale or replace; or give ops:
ops = ["rescale", "replace"]
positions = [0, 1, 2, 3]           # default: every position
factors = [0.0, 0.5, 2.0]          # rescale factors (default: the paper's ten)
stds = [0.02, 1.0]                 # replace stds (default: the paper's nine)
reps = 1                           # replace draws per cell (default 3)
# chunk = 64                       # variants per text pass (default: from memory)
# methods = ["coop"]               # sweep only these methods' runs

# [evaluate]                       # extra evaluations of every trained prompt (as `nemesis evaluate`)
# targets = ["imagenetv2"]
# classes = "all"

[outputs]                          # on a shared filesystem for a cluster; relative paths: from the current folder
checkpoints = "checkpoints"
reports = "reports/my-study"
# data_root = "/data"              # the CoOp datasets (default: $NEMESIS_DATA)
# cache_dir = "/weights"           # open_clip weights
# device = "auto"                  # auto (the GPU when num_gpus > 0, else the CPU), cpu, cuda or cuda:N
# offline = false

[resources]                        # per job (Ray: one long-lived worker per slot)
num_cpus = 1                       # torch uses this many threads
num_gpus = 0                       # 1: jobs run on a GPU (local too); 0.5: two Ray workers share one
max_retries = 2                    # retries after a lost worker (died, out of memory); our own errors are not retried
# max_parallel = 4                 # default: as many workers as the cluster has slots
"""


def write_template(path: Path | str, force: bool = False) -> Path:
    """Write :data:`TEMPLATE` to ``path``; refuses to overwrite an existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise StudyFileError(f"{path} exists; pass --force to overwrite it or choose another path")
    return atomic_write_text(path, TEMPLATE, "the study template")
