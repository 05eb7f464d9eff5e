"""The core's one error of configuration (the CLI: one line, exit 2); ``ticktape.config``
raises it too, for the settings."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting or configuration value that cannot be used."""
