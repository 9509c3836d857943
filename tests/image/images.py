"""The images the test runs: jobproxy from the Dockerfile, and what compose.yaml pulls.

jobproxy is built from the Dockerfile as it is, on the Dockerfile's own base when the
engine can pull it, else on a local base made from Debian's packages (``debootstrap``
of bookworm, whose Python is 3.11 as the Dockerfile's base): podman builds on it with
``--from``, docker with the base's name given to it for the build. The local base is
kept between runs on the same machine. The public images of compose.yaml (Redis,
nginx) are pulled when they can be, else replaced by stand-ins built on the same base
from ``standins.Containerfile``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.image.engine import Engine, Failure, tail
from tests.image.hostpip import build_mounts, host_settings

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
DOCKERFILE = ROOT / "Dockerfile"
STANDINS = HERE / "standins.Containerfile"
#: The image the test builds and runs (never the plain ``jobproxy`` a user may have).
IMAGE = "localhost/jobproxy:image-test"
#: The local base; the suffix changes whenever its recipe below does.
LOCAL_BASE = "localhost/jobproxy-image-test-base:bookworm-2"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-pip", "python-is-python3")
MIRROR_VARIABLE = "DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What the official image's configuration sets too.
BASE_CONFIG = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
# Left by debootstrap, needed by no container: package downloads and lists, documentation
# and translations (Debian's own slim images leave these out too).
TRIMMED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
)
# Debian's Python refuses pip installs outside a virtual environment (PEP 668); the
# official image's Python is its own, where the Dockerfile's pip install is the way.
EXTERNALLY_MANAGED = "usr/lib/python3.11/EXTERNALLY-MANAGED"


@dataclass(frozen=True)
class Base:
    """The image jobproxy is built on, and where it came from."""

    ref: str
    origin: str

    @property
    def is_local(self) -> bool:
        return self.ref == LOCAL_BASE


def dockerfile_base() -> str:
    """The Dockerfile's ``FROM`` image."""
    found = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    if found is None:
        raise Failure(f"no FROM line in {DOCKERFILE}")
    return found[1]


def qualified(ref: str) -> str:
    """A short image name as Docker reads it (``redis:7`` is ``docker.io/library/redis:7``).

    Podman would ask every registry of its configuration, or a person, for a short name.
    """
    first, slash, _ = ref.partition("/")
    if not slash:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def choose_base(engine: Engine, log: Path) -> Base:
    """The Dockerfile's base when the engine has it or can pull it, else the local one."""
    official = qualified(dockerfile_base())
    if engine.has_image(official):
        return Base(official, "the Dockerfile's own, already here")
    if engine.pull(official):
        return Base(official, "the Dockerfile's own, pulled")
    if engine.has_image(LOCAL_BASE):
        return Base(LOCAL_BASE, f"{official} cannot be pulled; the local Debian base, kept")
    build_local_base(engine, log)
    return Base(LOCAL_BASE, f"{official} cannot be pulled; the local Debian base, built")


def build_local_base(engine: Engine, log: Path) -> None:
    """debootstrap Debian with Python 3.11 and pip, and import it as :data:`LOCAL_BASE`."""
    if shutil.which("debootstrap") is None:
        raise Failure("debootstrap is needed for the local base (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise Failure("debootstrap needs root to make the local base")
    mirror = os.environ.get(MIRROR_VARIABLE, DEFAULT_MIRROR)
    rootfs = Path(tempfile.mkdtemp(prefix="jobproxy-base-", dir="/var/tmp"))
    try:
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ]
        with log.open("a") as sink:
            sink.write(f"$ {' '.join(command)}\n")
            sink.flush()
            done = subprocess.run(
                command, check=False, stdout=sink, stderr=subprocess.STDOUT, timeout=900
            )
        if done.returncode != 0:
            said = tail(log.read_text(), 20)
            raise Failure(f"debootstrap from {mirror} failed ({done.returncode}):\n{said}")
        for path in TRIMMED:
            for entry in (rootfs / path).iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        (rootfs / EXTERNALLY_MANAGED).unlink(missing_ok=True)
        changes = [arg for change in BASE_CONFIG for arg in ("--change", change)]
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                [engine.name, "import", *changes, "-", LOCAL_BASE],
                check=False,
                stdin=tar.stdout,
                env=engine.environ,
                capture_output=True,
                text=True,
                timeout=600,
            )
        if tar.returncode != 0 or imported.returncode != 0:
            raise Failure(f"importing the local base failed: {imported.stderr.strip()}")
    finally:
        _remove_tree(rootfs)


def _remove_tree(root: Path) -> None:
    """Remove a debootstrap tree, first unmounting what a failed run left mounted in it."""
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((p for p in mounted if p.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    shutil.rmtree(root, ignore_errors=True)


def build_jobproxy(engine: Engine, base: Base, log: Path, scratch: Path) -> list[str]:
    """Build :data:`IMAGE` from the Dockerfile, unchanged; notes for the step's output."""
    notes: list[str] = []
    args = ["build", "--network", "host", "-t", IMAGE, "-f", str(DOCKERFILE)]
    if engine.is_podman:
        # podman's own format (OCI) has no HEALTHCHECK: it would be dropped, silently.
        args += ["--format", "docker", "--from", base.ref]
        settings = host_settings()
        if settings:
            mounts = build_mounts(settings, scratch / "pip-home")
            args += [arg for mount in mounts for arg in ("--volume", mount)]
            notes.append(f"the host's pip settings: {', '.join(sorted(settings))}")
    elif host_settings():
        notes.append("docker build takes no build-time mounts: the host's pip settings stay out")
    args.append(str(ROOT))
    if engine.is_podman or not base.is_local:
        engine.run(*args, log=log, timeout=900)
        return notes
    # docker has no --from: the local base goes by the Dockerfile's base name meanwhile.
    official = dockerfile_base()
    engine.run("tag", base.ref, official)
    try:
        engine.run(*args, log=log, timeout=900)
    finally:
        engine.run("rmi", official, check=False)
    return notes


def public_image(engine: Engine, ref: str, base: Base, log: Path) -> tuple[str, str]:
    """``ref`` when it can be had, else its stand-in built on ``base``; and which it is."""
    official = qualified(ref)
    if engine.has_image(official) or engine.pull(official):
        return official, "pulled"
    target = ref.rsplit("/", 1)[-1].split(":", 1)[0]
    if not re.search(rf"^FROM \S+ AS {target}$", STANDINS.read_text(), re.MULTILINE):
        raise Failure(f"{official} cannot be pulled and {STANDINS.name} has no {target} stand-in")
    standin = f"localhost/jobproxy-image-test-{target}:stand-in"
    engine.run(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE={base.ref}",
        "--target",
        target,
        "-t",
        standin,
        "-f",
        str(STANDINS),
        str(HERE),
        log=log,
        timeout=900,
    )
    return standin, f"stand-in from Debian's {target} package"
