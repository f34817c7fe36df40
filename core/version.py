"""The version every meshnode process reports (`meshnode version`, the agent's
/debug/version, the proxy's /server_info): the installed distribution's, read once."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

DISTRIBUTION = "meshnode"
UNKNOWN = "0+unknown"  # a source tree that was never installed (no dist-info)


@functools.cache
def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def info(component: str) -> dict[str, str]:
    """What a component says about itself: its name, the meshnode version, the Python it
    runs on (a node image with another Python is a support question of its own)."""
    return {"component": component, "version": version(),
            "python": platform.python_version()}
