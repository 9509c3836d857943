"""``python -m tests.image`` (``make image-test``): build the image and run it for real.

Each step prints what it found; the first failure stops the run with exit 1.

1. a working engine: docker when its daemon answers, else podman (with the test's own
   ``containers.conf``);
2. the base: the Dockerfile's own when it can be pulled, else a local Debian bookworm
   one (made with debootstrap once, then kept);
3. the image, from the Dockerfile unchanged (podman: ``--format docker``, which keeps
   the HEALTHCHECK), with no build leftovers, running as uid 10001;
4. compose.yaml's public images, or stand-ins built from Debian's packages;
5. compose.yaml's jobserver and proxy: the jobclient's 50 jobs pass through the proxy,
   and the job server accepts their proof;
6. the proxy runs as uid 10001, and the image's health check follows a non-default port
   given as a flag (``--port 18000``) or in the environment (``JOBPROXY_PORT``);
7. a stop while requests are held: every one answered, exit code 0, the drain's time;
8. the replicas profile: Redis, three proxies, nginx in front: 50 jobs pass through it.

The test reaches the containers only through ports published on 127.0.0.1 (and the
jobclient's container, on the host's network). Every container and network it made is
removed at the end, also after a failure or an interruption; images stay, as the
engine's cache for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from tests.image.compose import LABEL, Project, images_of
from tests.image.engine import Engine, Failure, eventually, find_engine
from tests.image.images import (
    IMAGE,
    ROOT,
    build_jobproxy,
    choose_base,
    public_image,
)

STEPS = 8
COMPOSE_FILE = ROOT / "compose.yaml"
USER_ID = "10001"
PROXY_PORT = 8000
JOBSERVER_PORT = 8001
BALANCER_PORT = 8080
OTHER_PORT = 18000
HEALTHCHECK = ["CMD", "python", "-m", "proxy.serving.healthcheck"]
#: Longer than the 10 s an engine waits by default between SIGTERM and SIGKILL: only
#: the stop_grace_period of compose.yaml (30 s) lets these jobs finish.
HELD_JOB_SECONDS = 12
HELD_REQUESTS = 20
DRAINED = re.compile(
    r"drained (\d+) held requests in ([\d.]+) s: (\d+) finished, (\d+) answered 503"
)


class Steps:
    """Numbered steps with their findings, as the run's output."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        print(f"\n[{self.done}/{self.total}] {title}", flush=True)
        began = time.monotonic()
        yield
        print(f"      ok ({time.monotonic() - began:.1f} s)", flush=True)

    def tally(self, failed: int) -> str:
        """The closing line, in the words test runners use."""
        passed = self.done - failed
        skipped = self.total - self.done
        return f"image-test: {passed} passed, {failed} failed" + (
            f", {skipped} skipped" if skipped else ""
        )

    @staticmethod
    def say(text: str) -> None:
        print(f"      {text}", flush=True)


def get(url: str) -> httpx.Response:
    # Only containers of this machine are asked: no HTTP_PROXY of the environment.
    return httpx.get(url, timeout=5, trust_env=False)


def ready(url: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until ``url``'s /readyz answers 200; its JSON."""

    def probe() -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError):
            answer = get(f"{url}/readyz")
            if answer.status_code == 200:
                found: dict[str, Any] = answer.json()
                return found
        return None

    return eventually(probe, timeout, lambda: f"{url}/readyz is not 200")


def run_jobclient(engine: Engine, project: Project, url: str, account: str) -> dict[str, Any]:
    """The image's own jobclient, on the host's network, against ``url``: its report."""
    done = engine.run(
        "run", "--rm", "--name", project.name_of(f"jobclient-{account}"),
        "--label", f"{LABEL}={project.run}", "--network", "host", *engine.local_only,
        IMAGE, "jobclient", "--url", url, "--account", account, "--json",
        check=False, timeout=180,
    )  # fmt: skip
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise Failure(f"the jobclient printed no report: {done.stdout} {done.stderr}") from None
    if report["result"] != "PASSED" or done.returncode != 0:
        raise Failure(f"the jobclient did not pass (exit {done.returncode}): {report}")
    return report


def check_proof(jobserver: str, report: dict[str, Any]) -> dict[str, Any]:
    """The job server's own verdict on the jobclient's proof bundle."""
    answer = httpx.post(
        f"{jobserver}/verify",
        json={"proof": report["proof"], "account": report["account"]},
        trust_env=False,
    )
    verdict: dict[str, Any] = answer.json()
    if answer.status_code != 200 or not verdict.get("valid"):
        raise Failure(f"the job server refused the proof: {answer.status_code} {verdict}")
    return verdict


def process_user(engine: Engine, container: str) -> str:
    """The real user id of the container's main process (its PID 1)."""
    status = engine.run("exec", container, "cat", "/proc/1/status").stdout
    found = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    if found is None:
        raise Failure(f"no Uid line in /proc/1/status of {container}")
    return found[1]


@dataclass
class Stop:
    """What a stop with held requests came to."""

    answers: list[httpx.Response]
    late: httpx.Response
    seconds: float
    exit_code: int
    drained: re.Match[str] | None


async def stop_while_held(engine: Engine, container: str, url: str) -> Stop:
    """Hold requests, stop the container as the engine does, collect every answer."""
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        held = [
            asyncio.create_task(
                client.post(f"{url}/proxy", json={"account": f"held-{n}", "wait": True})
            )
            for n in range(HELD_REQUESTS)
        ]
        async with asyncio.timeout(30):
            # Another process: no event to await, its /readyz is asked again.
            while (await client.get(f"{url}/readyz")).json().get("pending") != HELD_REQUESTS:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        began = time.monotonic()
        # `stop` without a timeout: the container's own, from compose's stop_grace_period.
        stopping = asyncio.create_task(asyncio.to_thread(engine.run, "stop", container))
        async with asyncio.timeout(10):
            while (await client.get(f"{url}/readyz")).status_code != 503:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        late = await client.post(f"{url}/proxy", json={"account": "late", "wait": True})
        answers = await asyncio.gather(*held)
        await stopping
        seconds = time.monotonic() - began
    state = engine.inspect(container)["State"]
    return Stop(
        answers, late, seconds, int(state["ExitCode"]), DRAINED.search(engine.logs(container))
    )


def run_checks(steps: Steps, scratch: Path, run: str) -> None:
    log = scratch / "build.log"
    with steps.step("container engine"):
        engine = find_engine()
        steps.say(engine.run("--version").stdout.strip())
        if engine.is_podman:
            steps.say(f"CONTAINERS_CONF={engine.environ['CONTAINERS_CONF']}")

    with steps.step("base image"):
        base = choose_base(engine, log)
        steps.say(f"{base.ref}: {base.origin}")

    with steps.step("build the image from the Dockerfile"):
        for note in build_jobproxy(engine, base, log, scratch):
            steps.say(note)
        image = engine.inspect(IMAGE)
        steps.say(f"{IMAGE}: {image['Size'] / 1e6:.0f} MB on {base.ref}")
        # podman shows it beside the (OCI) configuration, docker inside its own.
        healthcheck = (image.get("Healthcheck") or image["Config"].get("Healthcheck") or {}).get(
            "Test"
        )
        if healthcheck != HEALTHCHECK:
            raise Failure(f"the image's HEALTHCHECK is {healthcheck}, not {HEALTHCHECK}")
        steps.say(f"HEALTHCHECK kept: {' '.join(healthcheck[1:])}")
        if image["Config"].get("User") != USER_ID:
            raise Failure(f"the image's USER is {image['Config'].get('User')!r}")
        contents = engine.run(
            "run", "--rm", "--user", "0", "--label", f"{LABEL}={run}", IMAGE,
            "sh", "-c", "ls -A /app /root",
        ).stdout.split()  # fmt: skip
        leftovers = [n for n in contents if n in ("build", ".config", ".host-pip")]
        leftovers += [n for n in contents if n.endswith(".egg-info")]
        if leftovers:
            raise Failure(f"build leftovers in the image: {leftovers}")
        steps.say("no build/, *.egg-info or build-time pip settings in the image")

    project_images = {"jobproxy": IMAGE}
    with steps.step("compose.yaml's public images"):
        for ref in sorted(images_of(COMPOSE_FILE) - {"jobproxy"}):
            project_images[ref], how = public_image(engine, ref, base, log)
            steps.say(f"{ref}: {project_images[ref]} ({how})")

    project = Project(engine, COMPOSE_FILE, project_images, run)
    try:
        project.create_network()
        exercise(engine, project, steps)
    except Failure:
        for alias, container in project.containers.items():
            print(f"\n--- logs of {alias} ---\n{engine.logs(container)}", file=sys.stderr)
        raise
    finally:
        left = project.down()
        print(
            f"\nremoved the run's containers and network {project.network}"
            + (f"; could not remove {', '.join(left)}" if left else ""),
            flush=True,
        )
        if left:
            raise Failure(f"left behind: {', '.join(left)}")


def exercise(engine: Engine, project: Project, steps: Steps) -> None:
    with steps.step("compose up (jobserver, proxy): the jobclient's 50 jobs"):
        check_jobs(engine, project, steps)
    with steps.step("non-root, and the health check on the port the proxy listens on"):
        check_user_and_health(engine, project, steps)
    with steps.step(f"stop with {HELD_REQUESTS} held requests"):
        check_stop(engine, project, steps)
    with steps.step("compose --profile replicas: Redis, three proxies, nginx"):
        check_replicas(engine, project, steps)


def check_jobs(engine: Engine, project: Project, steps: Steps) -> None:
    project.up(project.active())
    proxy = project.url("proxy", PROXY_PORT)
    ready(proxy)
    report = run_jobclient(engine, project, f"{proxy}/proxy", "image-test")
    steps.say(
        f"{report['succeeded']}/{report['jobs']} jobs, {report['result']} "
        f"in {report['total']} s (average {report['average']} s)"
    )
    verdict = check_proof(project.url("jobserver", JOBSERVER_PORT), report)
    steps.say(f"the job server checked the proof: {verdict['jobs']} jobs valid")


def check_user_and_health(engine: Engine, project: Project, steps: Steps) -> None:
    uid = process_user(engine, project.containers["proxy"])
    if uid != USER_ID:
        raise Failure(f"the proxy runs as uid {uid}, not {USER_ID}")
    steps.say(f"the proxy's process runs as uid {uid}")
    steps.say(f"port {PROXY_PORT} (compose): {engine.wait_healthy(project.containers['proxy'])}")
    variants = {
        "port-flag": (["--port", str(OTHER_PORT)], {}),
        "port-env": ([], {"JOBPROXY_PORT": str(OTHER_PORT)}),
    }
    for alias, (flags, environment) in variants.items():
        container = project.start(
            "proxy",
            alias=alias,
            command=["jobproxy", "--host", "0.0.0.0", *flags],
            environment=environment,
            ports=[OTHER_PORT],
        )
        health = engine.wait_healthy(container)
        served = get(f"{project.url(alias, OTHER_PORT)}/healthz").status_code
        given = " ".join(flags) or " ".join(f"{k}={v}" for k, v in environment.items())
        steps.say(f"port {OTHER_PORT} ({given}): {health}, /healthz {served} on it")


def check_stop(engine: Engine, project: Project, steps: Steps) -> None:
    project.start(
        "jobserver",
        alias="slow-jobserver",
        command=["jobserver", "--host", "0.0.0.0", "--port", str(JOBSERVER_PORT),
                 "--job-duration", str(HELD_JOB_SECONDS)],
    )  # fmt: skip
    project.wait_for("slow-jobserver", "service_healthy")
    container = project.start(
        "proxy",
        alias="draining-proxy",
        environment={
            "JOBPROXY_UPSTREAM_URL": f"http://slow-jobserver:{JOBSERVER_PORT}",
            "JOBPROXY_PUBLIC_URL": f"http://draining-proxy:{PROXY_PORT}",
        },
    )
    url = project.url("draining-proxy", PROXY_PORT)
    ready(url)
    grace = engine.inspect(container)["Config"].get("StopTimeout")
    steps.say(f"jobs of {HELD_JOB_SECONDS} s; the container's stop timeout: {grace} s")
    stop = asyncio.run(stop_while_held(engine, container, url))
    completed = [
        a for a in stop.answers if a.status_code == 200 and a.json()["state"] == "completed"
    ]
    late = stop.late.json().get("error")
    steps.say(
        f"{len(completed)}/{HELD_REQUESTS} held requests answered 200 completed; "
        f"a new one during the drain: {stop.late.status_code} {late}"
    )
    steps.say(f"stopped in {stop.seconds:.1f} s, exit code {stop.exit_code}")
    if stop.drained:
        steps.say(f"the proxy's log: {stop.drained[0]}")
    if len(completed) != HELD_REQUESTS:
        codes = [a.status_code for a in stop.answers]
        raise Failure(f"held requests were not all answered 200: {codes}")
    if stop.late.status_code != 503 or late != "shutting_down":
        raise Failure(f"a request during the drain got {stop.late.status_code} {late}")
    if stop.exit_code != 0:
        raise Failure(f"the proxy exited {stop.exit_code} after the stop, not 0")
    if stop.drained is None or stop.drained[3] != str(HELD_REQUESTS):
        raise Failure("the proxy's log has no drain of every held request")


def check_replicas(engine: Engine, project: Project, steps: Steps) -> None:
    project.up(project.active(["replicas"]))
    balancer = project.url("lb", BALANCER_PORT)
    replicas = eventually(
        lambda: found if len(found := ready(balancer).get("replicas", [])) == 3 else None,
        30,
        lambda: f"{balancer}/readyz does not list three replicas",
    )
    steps.say(f"the replicas see each other: {', '.join(sorted(replicas))}")
    report = run_jobclient(engine, project, f"{balancer}/proxy", "image-test-replicas")
    steps.say(
        f"{report['succeeded']}/{report['jobs']} jobs through nginx, {report['result']} "
        f"in {report['total']} s"
    )
    verdict = check_proof(project.url("jobserver", JOBSERVER_PORT), report)
    steps.say(f"the job server checked the proof: {verdict['jobs']} jobs valid")


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    # As Ctrl-C does: the run's finally blocks remove what it made.
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    began = time.monotonic()
    run = secrets.token_hex(4)
    steps = Steps(STEPS)
    print(f"image test {run}: {ROOT}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="jobproxy-image-test-") as scratch:
            run_checks(steps, Path(scratch), run)
    except (Failure, httpx.HTTPError) as failure:
        print(f"\nFAILED at step {steps.done}/{steps.total}: {failure}", file=sys.stderr)
        print(steps.tally(failed=1), flush=True)
        return 1
    except (KeyboardInterrupt, SystemExit):
        print(f"\ninterrupted at step {steps.done}/{steps.total}", file=sys.stderr)
        raise
    print(f"\nimage test PASSED in {time.monotonic() - began:.0f} s")
    print(steps.tally(failed=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
