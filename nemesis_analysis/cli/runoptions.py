"""The run-config options of ``train`` and ``corrupt``, generated from the settings' declarations.

Every setting that declares a ``flag`` (``spec(..., flag=...)`` in ``config/`` or in a method's
options) becomes a typer option with its type, default, help and help panel; nothing is repeated here.
:class:`RunCommand` builds a command's signature each time the CLI is built, so a method declared later
(a plugin) shows its options too. Precedence of a run's settings: defaults < ``--config FILE`` < flags
given on the command line < ``--set KEY=VALUE``; a ``--recipe`` is applied last and says what it changed
(on stderr, so ``--print-config`` stays valid TOML).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from nemesis_analysis.errors import ConfigError

ConfigFileOpt = Annotated[
    Optional[Path], typer.Option("--config", metavar="FILE", help="TOML run config: top-level fields and one table "
                                 "per section ([prompt], [nemesis], [optim], [plot], [kgcoop], ...).")
]  # fmt: skip
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config field by dotted name, e.g. --set nemesis.beta=0.5 (repeatable).",
    ),
]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config as TOML and exit.")]
PunOpt = Annotated[bool, typer.Option("--pun", help="Nemesis PUN: beta = 1.")]
PanOpt = Annotated[bool, typer.Option("--pan", help="Nemesis PAN: beta = 0.")]
# Parameters every run command takes besides the settings' flags (name -> (annotation, default)).
EXTRA_PARAMETERS = {"pun": (PunOpt, False), "pan": (PanOpt, False), "config_file": (ConfigFileOpt, None),
                    "set_": (SetOpt, None), "print_config": (PrintConfigOpt, False)}  # fmt: skip


def parameter_name(flag: str) -> str:
    """A flag's parameter name: dashes to underscores, the negative half of a boolean flag dropped."""
    return flag.split("/")[0].lstrip("-").replace("-", "_")


def flagged_settings() -> dict[str, object]:
    """The settings that declare a flag, by command parameter name (``n_ctx`` -> the ``prompt.n_ctx`` setting)."""
    from nemesis_analysis.config import settings

    return {parameter_name(s.flags[0]): s for s in settings().values() if s.flags}


def flag_of(dotted: str | None) -> str | None:
    """The flag that sets the setting ``dotted``, or None when only --config / --set reach it."""
    from nemesis_analysis.config import settings

    setting = settings(include_recorded=True).get(dotted) if dotted else None
    return setting.flags[0].split("/")[0] if setting is not None and setting.flags else None


def option_help(setting) -> str:
    """A setting's declared help as an option's help, its choices listed when the text lacks them."""
    text = setting.help
    choices = setting.choices
    if choices and not all(name in text for name in choices):
        text += f" ({', '.join(choices)})"
    return text + "."


def setting_parameter(name: str, setting) -> inspect.Parameter:
    """One typer option of a setting: its flags, type (Enum and open choices as str), default and help."""
    from nemesis_analysis.choices import plain
    from nemesis_analysis.fieldspec import base_type, is_optional

    kind = base_type(setting.annotation)
    kind = kind if kind in (bool, int, float) else str
    optional = is_optional(setting.annotation) or setting.default is None
    annotation = Optional[kind] if optional else kind
    flags = [flag for flag in setting.flags]
    option = typer.Option(*flags, help=option_help(setting), rich_help_panel=setting.metadata.get("panel") or None)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=plain(setting.default),
                             annotation=Annotated[annotation, option])  # fmt: skip


def run_parameters() -> list[inspect.Parameter]:
    """Every run-config option of ``train`` and ``corrupt``: the settings' flags, then --pun/--pan, --config,
    --set and --print-config."""
    found = [setting_parameter(name, setting) for name, setting in flagged_settings().items()]
    for name, (annotation, default) in EXTRA_PARAMETERS.items():
        found.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return found


def run_parameter_names() -> set[str]:
    return set(flagged_settings()) | set(EXTRA_PARAMETERS)


def given_options(ctx: typer.Context) -> set[str]:
    """Names of the parameters typed on the command line (or set from the environment), not left at defaults."""
    return {
        name for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    }  # fmt: skip


def layered_settings(given, config_file, sets, pun, pan, flags) -> dict:
    """Dotted settings from the config file, the flags given (--beta among them), --pun/--pan and --set, in
    that order."""
    from nemesis_analysis.config import default_pretrained, load_config_file, parse_assignment

    by_name = flagged_settings()
    unknown = set(flags) - set(by_name)
    if unknown:
        raise TypeError(f"unknown config flags {sorted(unknown)}")
    flags = {name: value for name, value in flags.items() if given is None or name in given}
    if sum([pun, pan, flags.get("beta") is not None]) > 1:
        raise ConfigError("give only one of --pun, --pan and --beta B")
    layered = load_config_file(config_file) if config_file is not None else {}
    layered.update({by_name[name].dotted: value for name, value in flags.items()})
    if pun or pan:
        layered["nemesis.beta"] = 1.0 if pun else 0.0
    layered.update(parse_assignment(item) for item in sets or [])
    if layered.get("pretrained") is None:
        layered["pretrained"] = default_pretrained(layered.get("backbone", "nemesis-tiny"))
    return layered


def build_run_config(*, given: set[str] | None = None, config_file: Path | None = None, sets: list[str] | None = None,
                     pun: bool = False, pan: bool = False, purpose: str = "train", say=None, **flags):  # fmt: skip
    """Layer defaults < config file < explicit flags < --set into a validated RunConfig, then apply the recipe.

    ``flags`` are the command's config flags by parameter name (``n_ctx``, ``norm_weight``, ``beta``...);
    only those named in ``given`` (typed on the command line, see :func:`given_options`) override the
    config file; with ``given=None`` (a call from Python) all of them do. ``purpose``: what the run is made
    for (``train`` or ``corrupt``), which the paper recipe's epochs depend on. ``say(text)`` reports what a
    recipe changed. Nothing heavy is imported: bad values fail at once.
    """
    from nemesis_analysis.config import RunConfig, apply_recipe, with_overrides

    layered = layered_settings(given, config_file, sets, pun, pan, flags)
    recipe = layered.pop("recipe", None)
    config = RunConfig.from_dict(with_overrides(RunConfig().to_dict(), layered), strict=True)
    config, changed = apply_recipe(config, recipe, purpose)
    if changed and say is not None:
        say(f"recipe {recipe}: {config.recipe_changes}")
    return config


class RunCommand:
    """A command that takes every run-config option: its signature is built from the declarations each
    time the CLI is built, and it calls ``body(ctx, config, print_config, **own options)``.

    ``body``'s own signature lists the command's other options after ``ctx, config, print_config``.
    """

    def __init__(self, body, purpose: str, say=None):
        self.body, self.purpose, self.say = body, purpose, say
        self.__name__, self.__qualname__, self.__doc__ = body.__name__, body.__qualname__, body.__doc__
        self.__module__, self.__annotations__ = body.__module__, {}

    @property
    def __signature__(self) -> inspect.Signature:
        own = list(inspect.signature(self.body, eval_str=True).parameters.values())
        ctx, others = own[0], [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[3:]]
        return inspect.Signature([ctx, *run_parameters(), *others])

    def __call__(self, ctx: typer.Context, **params):
        names = run_parameter_names()
        run = {name: params.pop(name) for name in list(params) if name in names}
        print_config = run.pop("print_config", False)
        config = build_run_config(given=given_options(ctx), config_file=run.pop("config_file"), sets=run.pop("set_"),
                                  purpose=self.purpose, say=self.say, **run)  # fmt: skip
        return self.body(ctx, config, print_config, **params)
