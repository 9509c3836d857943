"""The container engine the image test drives: docker when its daemon answers, else podman.

Both take the same command lines for what the test does (build, run, exec, inspect,
stop, rm, network). Podman reads the test's own ``containers.conf`` through
``CONTAINERS_CONF`` (never a file in /etc): see that file for why each line is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).parent
CONTAINERS_CONF = HERE / "containers.conf"
#: Names the engine to use (docker or podman) instead of the first one that works.
ENGINE_VARIABLE = "IMAGE_TEST_ENGINE"
COMMAND_TIMEOUT = 120.0

T = TypeVar("T")


class Failure(Exception):
    """A step of the image test failed; the message says what was expected and what came."""


@dataclass(frozen=True)
class Engine:
    """One container engine's command line, with the environment it runs in."""

    name: str
    environ: dict[str, str]

    @property
    def is_podman(self) -> bool:
        return self.name == "podman"

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        log: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<engine> *args``; a failure raises :class:`Failure` unless ``check`` is off.

        With ``log`` the output goes to that file (a build's), else it is captured.
        """
        argv = [self.name, *args]
        try:
            with contextlib.ExitStack() as stack:
                output: dict[str, Any] = {"capture_output": True}
                if log is not None:
                    sink = stack.enter_context(log.open("a"))
                    sink.write(f"$ {' '.join(argv)}\n")
                    sink.flush()
                    output = {"stdout": sink, "stderr": subprocess.STDOUT}
                done = subprocess.run(
                    argv, check=False, env=self.environ, text=True, timeout=timeout, **output
                )
        except subprocess.TimeoutExpired:
            raise Failure(f"`{self.name} {args[0]}` did not finish within {timeout:g} s") from None
        if check and done.returncode != 0:
            said = tail(log.read_text(), 20) if log else tail(done.stderr, 5)
            raise Failure(
                f"`{self.name} {' '.join(args[:3])} ...` exited {done.returncode}:\n{said}"
            )
        return done

    @property
    def local_only(self) -> list[str]:
        """``run`` options that keep a container's traffic on this machine: podman hands
        the host's HTTP_PROXY and the like to every container unless told not to."""
        return ["--http-proxy=false"] if self.is_podman else []

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def pull(self, ref: str) -> bool:
        """Pull ``ref``; False when it cannot be had (no registry reachable, say)."""
        return self.run("pull", ref, check=False, timeout=300).returncode == 0

    def inspect(self, ref: str) -> dict[str, Any]:
        """``inspect`` of one container or image, as a dict."""
        (found,) = json.loads(self.run("inspect", ref).stdout)
        result: dict[str, Any] = found
        return result

    def health(self, container: str) -> str:
        """The container's health as the engine reports it (``starting``, ``healthy``...)."""
        state = self.inspect(container)["State"]
        return str((state.get("Health") or state.get("Healthcheck") or {}).get("Status", "none"))

    def wait_healthy(self, container: str, timeout: float = 60) -> str:
        """Wait until the engine calls ``container`` healthy through the image's own check.

        Podman runs health checks from systemd timers, absent where systemd is not the
        init (as in CI): the test then runs the check itself, as the timer would.
        Docker runs them on its own; the test waits for its verdict.
        """

        def healthy() -> str | None:
            if self.is_podman:
                self.run("healthcheck", "run", container, check=False)
            return "healthy" if self.health(container) == "healthy" else None

        return eventually(healthy, timeout, lambda: f"{container} is {self.health(container)}")

    def logs(self, container: str, lines: int = 30) -> str:
        done = self.run("logs", "--tail", str(lines), container, check=False)
        return (done.stdout + done.stderr).strip()


def find_engine() -> Engine:
    """The first engine that answers ``info``: docker (a daemon is running), then podman."""
    wanted = os.environ.get(ENGINE_VARIABLE)
    tried: list[str] = []
    for name in [wanted] if wanted else ["docker", "podman"]:
        if shutil.which(name) is None:
            tried.append(f"{name}: not installed")
            continue
        environ = dict(os.environ)
        if name == "podman":
            environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
        engine = Engine(name, environ)
        version = engine.run("--version", check=False).stdout.strip()
        if name == "docker" and "podman" in version.lower():
            tried.append("docker: podman's docker command, taken as podman")
            continue
        info = engine.run("info", check=False, timeout=60)
        if info.returncode == 0:
            return engine
        tried.append(f"{name}: `{name} info` failed ({last_line(info.stderr)})")
    raise Failure("no working container engine (" + "; ".join(tried) + "); .ci/run installs podman")


def eventually(
    probe: Callable[[], T | None], timeout: float, describe: Callable[[], str], pause: float = 0.5
) -> T:
    """Ask ``probe`` until it gives a value, at most ``timeout`` seconds.

    Containers in other processes signal nothing the test could await: it asks again.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise Failure(f"not within {timeout:g} s: {describe()}")
        time.sleep(pause)


def last_line(text: str) -> str:
    return tail(text, 1) or "no output"


def tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
