"""nemesis-analysis: train, corrupt and normalise the soft prompts of vision-language models."""

__version__ = "0.1.0"
