"""Domain exceptions. The library raises them; only the CLI turns them into a message and exit code 2."""


class NemesisError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""


class ConfigError(NemesisError, ValueError):
    """A configuration value is invalid (bad flag, unknown choice, incompatible options)."""


class DataError(NemesisError):
    """A dataset cannot be found or read."""


class ModelError(NemesisError):
    """Weights cannot be loaded, or a checkpoint does not fit the model. ``field``: the dotted config field
    whose value would make it fit, when there is one (the CLI adds the flag that sets it)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NoDataError(NemesisError):
    """A table or artifact that a command needs has not been produced yet."""


class TrainingDiverged(NemesisError):
    """A loss or a norm became NaN or infinite."""


class FieldError(ConfigError):
    """A config field has a bad value; ``field`` is its dotted name (the CLI adds the flag that sets it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class DamagedPartError(NemesisError):
    """A table's Parquet part cannot be read (truncated, empty, not Parquet); ``path`` names it."""

    def __init__(self, path, message: str) -> None:
        super().__init__(message)
        self.path = path
