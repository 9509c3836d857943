"""compose.yaml's services, run as the engine's own containers, from the same file.

The test starts what ``docker compose up`` (and ``--profile replicas``) starts without
a compose tool, which not every machine has (Debian's podman-compose is old, and podman
runs health checks only under systemd, which ``depends_on: service_healthy`` waits on).
Each service is one container on a network of the run, found there by the service's
name (a network alias); its ports are published on 127.0.0.1 only, at free ports; it
carries the run's label, so that :meth:`Project.down` removes every container and the
network, also after a failure. A key this file does not translate stops the test: a
compose file that grows makes this file grow too, rather than a test that passes on
less than users run.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.image.engine import Engine, Failure, eventually

KNOWN_KEYS = frozenset(
    {
        "image",
        "build",
        "command",
        "environment",
        "ports",
        "healthcheck",
        "depends_on",
        "profiles",
        "stop_grace_period",
        "volumes",
    }
)
LABEL = "jobproxy.image-test"
LOOPBACK = "127.0.0.1"


def seconds(duration: str | int) -> int:
    """A compose duration (``30s``, ``1m``) in whole seconds."""
    found = re.fullmatch(r"(\d+)(s|m)?", str(duration))
    if found is None:
        raise Failure(f"compose duration {duration!r} is not translated")
    return int(found[1]) * (60 if found[2] == "m" else 1)


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now, for one published port."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def images_of(file: Path) -> set[str]:
    """The images the services of a compose file run."""
    document = yaml.safe_load(file.read_text())
    return {str(spec["image"]) for spec in document["services"].values()}


@dataclass(frozen=True)
class Service:
    """One service of the compose file."""

    name: str
    spec: Mapping[str, Any]

    @property
    def image(self) -> str:
        return str(self.spec["image"])

    @property
    def profiles(self) -> list[str]:
        return list(self.spec.get("profiles", []))

    @property
    def ports(self) -> list[int]:
        """The container's published ports (``"8000:8000"`` publishes 8000)."""
        return [
            int(str(port).rsplit(":", 1)[-1].split("/")[0]) for port in self.spec.get("ports", [])
        ]

    @property
    def environment(self) -> dict[str, str]:
        given = self.spec.get("environment", {})
        if isinstance(given, list):
            return dict(item.split("=", 1) for item in given)
        return {key: str(value) for key, value in given.items()}

    @property
    def depends_on(self) -> dict[str, str]:
        """Each service this one waits for, and for what (``service_started`` or ``_healthy``)."""
        given = self.spec.get("depends_on", {})
        if isinstance(given, list):
            return dict.fromkeys(given, "service_started")
        return {name: how.get("condition", "service_started") for name, how in given.items()}


class Project:
    """The services of one compose file, as containers of one test run."""

    def __init__(self, engine: Engine, file: Path, images: Mapping[str, str], run: str) -> None:
        document = yaml.safe_load(file.read_text())
        self.engine = engine
        self.directory = file.parent
        self.images = images
        self.run = run
        self.network = f"jobproxy-image-test-{run}"
        self.services = {name: Service(name, spec) for name, spec in document["services"].items()}
        for service in self.services.values():
            unknown = set(service.spec) - KNOWN_KEYS
            if unknown:
                raise Failure(
                    f"{file.name}: service {service.name} uses {', '.join(sorted(unknown))}, "
                    "which tests/image/compose.py does not translate"
                )
        self.containers: dict[str, str] = {}  # name in the network → container
        self.published: dict[tuple[str, int], int] = {}  # (name, port) → port on 127.0.0.1

    def name_of(self, alias: str) -> str:
        return f"jobproxy-image-test-{self.run}-{alias}"

    def create_network(self) -> None:
        self.engine.run("network", "create", "--label", f"{LABEL}={self.run}", self.network)

    def active(self, profiles: Sequence[str] = ()) -> list[str]:
        """The services ``compose --profile ... up`` starts, each after what it depends on."""
        wanted = [
            s for s in self.services.values() if not s.profiles or set(s.profiles) & set(profiles)
        ]
        ordered: list[str] = []

        def visit(service: Service) -> None:
            if service.name not in ordered:
                for dependency in service.depends_on:
                    visit(self.services[dependency])
                ordered.append(service.name)

        for service in wanted:
            visit(service)
        return ordered

    def up(self, names: Sequence[str]) -> None:
        """Start the services not running yet, each once its dependencies are ready."""
        for name in names:
            if name not in self.containers:
                self.start(name)

    def start(
        self,
        service_name: str,
        *,
        alias: str | None = None,
        command: Sequence[str] | None = None,
        environment: Mapping[str, str] | None = None,
        ports: Sequence[int] | None = None,
    ) -> str:
        """Start one container of a service, under ``alias`` (the service's name) and with
        its command, environment or ports changed where a check needs it; its name."""
        service = self.services[service_name]
        alias = alias or service.name
        for dependency, condition in service.depends_on.items():
            self.wait_for(dependency, condition)
        spec = service.spec
        name = self.name_of(alias)
        args = ["run", "--detach", "--name", name, "--label", f"{LABEL}={self.run}"]
        args += self.engine.local_only
        args += ["--network", self.network, "--network-alias", alias]
        for port in service.ports if ports is None else ports:
            host_port = free_port()
            self.published[(alias, port)] = host_port
            args += ["--publish", f"{LOOPBACK}:{host_port}:{port}"]
        for key, value in (service.environment | dict(environment or {})).items():
            args += ["--env", f"{key}={value}"]
        if "stop_grace_period" in spec:
            args += ["--stop-timeout", str(seconds(spec["stop_grace_period"]))]
        for volume in spec.get("volumes", []):
            source, target, *mode = str(volume).split(":")
            host = (self.directory / source).resolve() if source.startswith(".") else Path(source)
            args += ["--volume", ":".join([str(host), target, *mode])]
        args += self._healthcheck(spec.get("healthcheck"))
        args.append(self.images.get(service.image, service.image))
        given = command if command is not None else spec.get("command")
        args += [str(arg) for arg in given or []]
        self.containers[alias] = name
        self.engine.run(*args)
        return name

    def _healthcheck(self, healthcheck: Mapping[str, Any] | None) -> list[str]:
        if healthcheck is None:
            return []
        unknown = set(healthcheck) - {"test", "interval"}
        if unknown:
            raise Failure(f"healthcheck keys {sorted(unknown)} are not translated")
        kind, *argv = healthcheck["test"]
        if kind != "CMD":
            raise Failure(f"healthcheck test {kind} is not translated")
        # podman takes the exec form as a JSON array; docker's flag is a shell command.
        test = json.dumps(argv) if self.engine.is_podman else shlex.join(argv)
        args = ["--health-cmd", test]
        if "interval" in healthcheck:
            args += ["--health-interval", f"{seconds(healthcheck['interval'])}s"]
        return args

    def wait_for(self, alias: str, condition: str) -> None:
        """Wait until the container of ``alias`` is started or healthy, as compose would."""
        container = self.containers.get(alias)
        if container is None:
            raise Failure(f"{alias} must be started before what depends on it")
        if condition == "service_healthy":
            self.engine.wait_healthy(container)
        elif condition == "service_started":

            def running() -> bool | None:
                return True if self.engine.inspect(container)["State"]["Running"] else None

            eventually(running, 30, lambda: f"{container} is not running")
        else:
            raise Failure(f"depends_on condition {condition} is not translated")

    def url(self, alias: str, port: int) -> str:
        """The base URL at which the test reaches ``port`` of that container."""
        return f"http://{LOOPBACK}:{self.published[(alias, port)]}"

    def down(self) -> list[str]:
        """Remove every container and the network of the run; what could not be removed."""
        left: list[str] = []
        listed = self.engine.run(
            "ps", "--all", "--quiet", "--filter", f"label={LABEL}={self.run}", check=False
        )
        # At once: a proxy's stop timeout (30 s) is for its held requests, not for this.
        now = ["--time", "0"] if self.engine.is_podman else []
        for container in listed.stdout.split():
            removed = self.engine.run("rm", "--force", "--volumes", *now, container, check=False)
            if removed.returncode != 0:
                left.append(f"container {container}")
        networks = self.engine.run("network", "ls", "--quiet", "--filter", f"name={self.network}")
        if networks.stdout.strip():
            removed = self.engine.run("network", "rm", self.network, check=False)
            if removed.returncode != 0:
                left.append(f"network {self.network}")
        return left
