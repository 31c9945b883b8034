"""Reading saved files safely: tensor files and JSON, with one-line errors naming a damaged file and the fix.

``torch.load`` always runs with ``weights_only=True`` (tensors and plain containers, never code); a file
that needs more is refused with :func:`not_plain_tensor_message`, which never relays PyTorch's advice to
switch that safety off.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from nemesis_analysis.errors import ModelError


class DamagedFileError(ModelError):
    """A saved file cannot be read (truncated, garbage, wrong content); the message names it and the fix."""


def not_plain_tensor_message(path: Path | str, what: str = "file") -> str:
    """One line: ``path`` is not a plain tensor file, we do not unpickle objects, and how to convert it."""
    return (
        f"{what} {path} is not a plain tensor file (safetensors, or torch.save of tensors and plain containers); "
        "the toolkit does not unpickle arbitrary Python objects: if you trust the file, load it in Python and "
        "save its state dict with safetensors.torch.save_file, then pass that file"
    )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


def is_unpickling_refusal(error: BaseException) -> bool:
    """Whether ``torch.load(..., weights_only=True)`` refused the file (pickled objects, or not a pickle:
    a text file raises a bare KeyError or an UnpicklingError)."""
    text = str(error)
    return isinstance(error, (pickle.UnpicklingError, KeyError)) or "weights_only" in text or "Weights only" in text


def torch_load(path: Path | str, what: str = "file"):
    """``torch.load`` of tensors and plain containers only, on the CPU; one-line ModelError otherwise."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{what} {path} not found; check the path") from None
    except PermissionError as error:
        raise ModelError(f"cannot read {what} {path} ({first_line(error)}); check its permissions") from None
    except Exception:  # UnpicklingError, RuntimeError, EOFError, KeyError (a text file)...: not plain tensors
        raise ModelError(not_plain_tensor_message(path, what)) from None


def load_safetensors(path: Path | str, fix: str, what: str = "file") -> dict:
    """All tensors of a ``.safetensors`` file; a damaged one is a :class:`DamagedFileError` ending in ``fix``."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DamagedFileError(f"{what} {path} is missing; {fix}") from None
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for bad files
        raise DamagedFileError(f"{what} {path} is damaged ({first_line(error)}); {fix}") from None


def safetensors_metadata(path: Path | str, fix: str, what: str = "file") -> dict:
    """The header metadata of a ``.safetensors`` file (damaged: :class:`DamagedFileError`)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as error:
        raise DamagedFileError(f"{what} {path} is damaged ({first_line(error)}); {fix}") from None


def read_json(path: Path | str, fix: str, what: str = "file"):
    """A JSON file's content; a damaged one (not JSON, not text) is a :class:`DamagedFileError` ending in ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DamagedFileError(f"{what} {path} is missing; {fix}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{what} {path} is damaged (not valid JSON: {first_line(error)}); {fix}") from None
