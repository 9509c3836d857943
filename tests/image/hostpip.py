"""The host's pip settings, handed to a podman build without changing the Dockerfile.

A machine that reaches PyPI through a TLS-inspecting proxy, or through a mirror, says so
in pip's configuration (``PIP_*`` variables, ``/etc/pip.conf``, ``/etc/xdg/pip``,
``~/.config/pip``); the image's ``pip install`` must use the same index and CA bundle
there. The Dockerfile stays as everyone builds it; the test alone hands these settings
to the build's RUN steps, through read-only build-time mounts (``podman build -v``):

- a directory mounted over ``/root``, root's home, where pip reads
  ``~/.config/pip/pip.conf``: a pip.conf with the settings that reach an index, and a
  copy of the CA bundle. ``/root`` exists in every base, so the mount leaves no mount
  point behind in the image, and nothing of it is committed to a layer;
- the local indexes and wheel folders these settings name (``file://`` URLs, paths),
  mounted below that directory at their own paths.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: What reaches an index; the rest of the host's pip settings stays on the host.
OPTIONS = ("index-url", "extra-index-url", "find-links", "trusted-host", "cert", "timeout")
ALIASES = {"default-timeout": "timeout"}
#: pip's own precedence: its variables, then the install command's section, then global.
SCOPES = (":env:", "install", "global")
HOME = "/root"
CARRIED = ".host-pip"


def host_settings(python: str = sys.executable) -> dict[str, str]:
    """The host's effective pip settings among :data:`OPTIONS`, as pip itself reads them."""
    listed = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    by_name: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():  # scope.name='value'
        key, equals, value = line.partition("=")
        scope, dot, name = key.rpartition(".")
        if equals and dot:
            by_name.setdefault(ALIASES.get(name, name), {})[scope] = str(ast.literal_eval(value))
    chosen: dict[str, str] = {}
    for name in OPTIONS:
        scopes = by_name.get(name, {})
        for scope in SCOPES:
            if scope in scopes:
                chosen[name] = scopes[scope]
                break
    return chosen


def build_mounts(settings: Mapping[str, str], home: Path) -> list[str]:
    """Write the build's pip.conf under ``home``; the build's ``--volume`` values."""
    carried = home / CARRIED
    carried.mkdir(parents=True)
    mounts: dict[Path, str] = {}

    def inside(location: str, *, index: bool) -> str:
        """A local index or folder, mounted below HOME at its own path; URLs stay."""
        is_url = location.startswith("file://")
        if "://" in location and not is_url:
            return location
        path = Path(unquote(urlsplit(location).path) if is_url else location)
        if not path.exists():
            return location  # pip passes over it on the host too
        # A PEP 503 index keeps its files beside simple/: its parent goes along.
        root = path.parent if index and path.name == "simple" else path
        mounts.setdefault(root, f"{HOME}/{CARRIED}{root}")
        (carried / root.relative_to("/")).mkdir(parents=True, exist_ok=True)
        moved = f"{HOME}/{CARRIED}{path}"
        return f"file://{moved}" if is_url else moved

    written: dict[str, str] = {}
    for name, value in settings.items():
        if name == "cert" and Path(value).is_file():
            shutil.copyfile(value, carried / "ca.crt")
            written[name] = f"{HOME}/{CARRIED}/ca.crt"
        elif name in ("index-url", "extra-index-url", "find-links"):
            index = name != "find-links"
            written[name] = " ".join(inside(item, index=index) for item in value.split())
        else:
            written[name] = value
    conf = home / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in written.items()))
    # The home first: the mounts below it go on top of it.
    return [f"{home}:{HOME}:ro", *(f"{path}:{target}:ro" for path, target in mounts.items())]
