"""What ``pip install .`` carries: the runtime lock holds every distribution the
installed packages need, and nothing that only the tests or the bench need."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
INSTALLED_PACKAGES = ("proxy", "jobserver", "infra")
# Imports every module of the packages named, with every distribution outside the ones
# allowed hidden, as in an install of requirements.lock alone: a module that needs one
# fails to import; an optional import (httpx's command line, say) is skipped as there.
IMPORT_LEAN = """
import importlib, importlib.abc, importlib.metadata, json, pkgutil, re, sys

def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()

allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()

class RuntimeOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        found = {normalise(d) for d in owners.get(name.split(".")[0], [])}
        if found and not found & allowed:
            raise ModuleNotFoundError(f"{name} is not in the runtime install", name=name)
        return None

sys.meta_path.insert(0, RuntimeOnly())
for package in sys.argv[2:]:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
"""


def locked_names(lock: str) -> set[str]:
    """The distributions a lock file pins, by normalised name."""
    text = (ROOT / lock).read_text()
    return {normalise(m) for m in re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.MULTILINE)}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_module_imports_with_the_runtime_lock_alone() -> None:
    """Every module of proxy, jobserver and infra imports with only requirements.lock's
    distributions (what the image installs)."""
    allowed = sorted(locked_names("requirements.lock") | {"jobproxy"})
    imported = subprocess.run(
        [sys.executable, "-c", IMPORT_LEAN, json.dumps(allowed), *INSTALLED_PACKAGES],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr[-2_000:]


def test_the_runtime_lock_carries_no_aiohttp() -> None:
    """aiohttp (a second job server in the tests) is a test dependency, not a runtime one."""
    assert not {"aiohttp", "httpx-aiohttp"} & locked_names("requirements.lock")
    assert "aiohttp" in locked_names("requirements-dev.lock")
