"""The megatron-core releases megatron_sail is tested with, and the start-up check of the
installed one.

Tested: 0.16.1 (Python 3.11, torch 2.13) and 0.17.x, 0.18.x, 0.19.x (Python 3.12, torch
2.12). ``setup.py`` declares the same range; a release outside it may change any of the
internals the other modules of this package touch, so it is refused rather than half-run.
"""

from __future__ import annotations

from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from megatron_sail.errors import UserError

SUPPORTED_MEGATRON_CORE = ">=0.16.1,<0.20"


class CompatError(UserError, RuntimeError):
    """The installed Megatron-Core / torch is not one megatron_sail runs on."""


def installed_megatron_core() -> str:
    """The installed megatron-core distribution's version (tests fake it through here)."""
    try:
        return metadata.version("megatron-core")
    except metadata.PackageNotFoundError:
        raise CompatError("megatron-core is not installed; megatron_sail needs "
                          f"megatron-core{SUPPORTED_MEGATRON_CORE}") from None


def check_megatron_core_version() -> str:
    """Raise CompatError unless the installed megatron-core is in the supported range."""
    found = installed_megatron_core()
    try:
        inside = SpecifierSet(SUPPORTED_MEGATRON_CORE).contains(Version(found), prereleases=True)
    except InvalidVersion:
        inside = False
    if not inside:
        raise CompatError(f"megatron-core {found} is installed, but megatron_sail supports "
                          f"megatron-core{SUPPORTED_MEGATRON_CORE} (install e.g. "
                          f"'megatron-core{SUPPORTED_MEGATRON_CORE}')")
    return found
