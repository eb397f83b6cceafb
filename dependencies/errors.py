"""Errors of the dependency installer: subclasses of the engine's one root exception."""

from ..engine.errors import UncertaintyError

__all__ = ["InstallError", "InstallCancelled"]


class InstallError(UncertaintyError, RuntimeError):
    """Installing or checking the plugin's Python packages failed; the message names the cause and the fix."""


class InstallCancelled(InstallError):
    """The caller cancelled; pip was stopped and the previous installation is still the active one."""
