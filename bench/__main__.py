"""``python -m bench`` (``make bench``): run the benchmarks, print tables, write JSON.

Exit codes: 0 ran (and, with ``--strict``, met every target); 1 a target was missed under
``--strict``; 2 bad usage; 3 the bench itself could not run (a server did not start, the
load generator failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from bench.dialects import DIALECT_NAMES
from bench.harness import ServerFailed
from bench.load import LoadFailed
from bench.options import SCENARIOS, SHAPE_NAMES, TRANSPORTS, BenchOptions
from bench.plot import PlotUnavailable, write_plot
from bench.report import print_report, results_document
from bench.runs import BenchResults, run_bench
from bench.servers import BENCH_PROXY_SETTINGS, proxy_environment
from bench.system import files_needed, machine_info, raise_open_file_limit
from proxy.config import ConfigError, Settings

EXIT_OK = 0
TARGET_MISSED = 1
USAGE_ERROR = 2
BENCH_FAILED = 3
DEFAULT_OUTPUT = Path("bench/results.json")
WIDE_OUTPUT = 200  # columns of the tables when stdout is not a terminal
QUICK = BenchOptions(
    sizes=(20,),
    accounts=4,
    job_duration=0.1,
    rtts=(0.0, 40.0),
    network_jobs=40,
    network_accounts=4,
    warmup=4,
    request_timeout=20.0,
    shapes=("inline", "leave-gate"),
    hold_jobs=20,
    async_jobs=20,
)

Choice = TypeVar("Choice", bound=str)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"1000,5000,10k"`` → ``(1000, 5000, 10000)``."""
    sizes: list[int] = []
    for part in filter(None, (word.strip().lower().replace("_", "") for word in text.split(","))):
        try:
            number = float(part.removesuffix("k")) * (1_000 if part.endswith("k") else 1)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 1 or number != int(number):
            raise argparse.ArgumentTypeError(f"{part!r} is not a whole number of requests")
        sizes.append(int(number))
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return tuple(sizes)


def parse_rtts(text: str) -> tuple[float, ...]:
    """``"0,20,100"`` → ``(0.0, 20.0, 100.0)``: round trips in milliseconds, in the order given."""
    rtts: list[float] = []
    for part in filter(None, (word.strip() for word in text.split(","))):
        try:
            rtt = float(part)
        except ValueError:
            rtt = math.nan
        if not math.isfinite(rtt) or rtt < 0:
            raise argparse.ArgumentTypeError(f"{part!r} is not a round trip in milliseconds")
        if rtt not in rtts:
            rtts.append(rtt)
    if not rtts:
        raise argparse.ArgumentTypeError("no round trips given")
    return tuple(rtts)


def parse_proxy_setting(text: str) -> tuple[str, str]:
    """``"NAME=VALUE"`` → ``("name", "VALUE")``: a proxy setting the bench leaves free."""
    name, equals, value = text.partition("=")
    name = name.strip().lower()
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    if name not in Settings.model_fields:
        raise argparse.ArgumentTypeError(f"{name!r} is not a proxy setting (see config/proxy.toml)")
    if name in BENCH_PROXY_SETTINGS:
        instead = " (use --transport)" if name == "upstream_transport" else ""
        raise argparse.ArgumentTypeError(f"{name!r} is set by the bench itself{instead}")
    return name, value


def parse_choices(text: str, allowed: Sequence[Choice], what: str) -> tuple[Choice, ...]:
    """A comma-separated subset of ``allowed`` (or ``all``/``both``), in the order given."""
    chosen: list[Choice] = []
    for word in (part.strip() for part in text.split(",")):
        if word in ("all", "both"):
            return tuple(allowed)
        match = next((choice for choice in allowed if choice == word), None)
        if match is None:
            raise argparse.ArgumentTypeError(
                f"{word!r} is not a {what}: choose from {', '.join(allowed)}, all"
            )
        if match not in chosen:
            chosen.append(match)
    return tuple(chosen)


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the proxy against the job server on loopback.",
    )
    add = parser.add_argument
    add(
        "--sizes",
        type=parse_sizes,
        help=f"scale sizes (default {','.join(map(str, defaults.sizes))})",
    )
    add(
        "--accounts",
        type=int,
        help=f"accounts of the proxied scale runs (default {defaults.accounts})",
    )
    add("--job-duration", type=float, help=f"job duration, s (default {defaults.job_duration})")
    add("--job-spread", type=float, help="standard deviation of the job duration, s (default 0)")
    add(
        "--scenarios",
        type=lambda text: parse_choices(text, SCENARIOS, "scenario"),
        help=(
            "fifty, scale, floor, network, shapes, holds, fifty-direct (about 25 s), or all "
            f"(default {','.join(defaults.scenarios)})"
        ),
    )
    add(
        "--shapes",
        type=lambda text: parse_choices(text, SHAPE_NAMES, "job server shape"),
        help=f"job server shapes of the shapes scenario (default {','.join(defaults.shapes)})",
    )
    add(
        "--hold-jobs",
        type=int,
        help=f"jobs of each form of the holds scenario (default {defaults.hold_jobs})",
    )
    add(
        "--async-jobs",
        type=int,
        help=f"jobs of its respond-async run, whose accept lag is judged "
        f"(default {defaults.async_jobs})",
    )
    add(
        "--transport",
        type=lambda text: parse_choices(text, TRANSPORTS, "transport"),
        help="the proxy's upstream transport: native, httpx or both (default native)",
    )
    add(
        "--dialect",
        choices=DIALECT_NAMES,
        help="the API the job server, the proxy and the clients speak: work-sample or "
        "predictions (default work-sample)",
    )
    add(
        "--fifty-jobs",
        type=int,
        help=f"jobs of the one-account run (default {defaults.fifty_jobs})",
    )
    add(
        "--fifty-repeats",
        type=int,
        help=f"runs of the one-account test; the median counts (default {defaults.fifty_repeats})",
    )
    add(
        "--rtts",
        type=parse_rtts,
        help="round trips to the job server of the network runs, ms "
        f"(default {','.join(f'{rtt:g}' for rtt in defaults.rtts)})",
    )
    add(
        "--network-jobs",
        type=int,
        help=f"jobs of the network run over several accounts (default {defaults.network_jobs})",
    )
    add(
        "--network-accounts",
        type=int,
        help=f"accounts of that run (default {defaults.network_accounts})",
    )
    add(
        "--proxy-setting",
        type=parse_proxy_setting,
        action="append",
        metavar="NAME=VALUE",
        help="a proxy setting for every proxy started, as JOBPROXY_<NAME>=VALUE (repeatable)",
    )
    add("--warmup", type=int, help=f"requests before each timed run (default {defaults.warmup})")
    add(
        "--timeout",
        type=float,
        help=f"deadline of each run, s (default {defaults.request_timeout:g})",
    )
    add("--seed", type=int, help="the job server's seed")
    add(
        "--quick",
        action="store_true",
        help="tiny sizes for a smoke test (20 jobs, 4 accounts, 0.1 s; round trips 0 and 40 ms)",
    )
    add(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"JSON results (default {DEFAULT_OUTPUT})",
    )
    add(
        "--plot",
        type=Path,
        help="also write a PNG of the latencies, and <stem>-network.png of the network runs "
        "(needs matplotlib)",
    )
    add("--strict", action="store_true", help="exit 1 when a target is missed")
    add("--echo", action="store_true", help="show the servers' logs on stderr")
    return parser


def options_from(args: argparse.Namespace) -> BenchOptions:
    """Flags given win over ``--quick``, which wins over the defaults."""
    base = QUICK if args.quick else BenchOptions()
    chosen = {
        "sizes": args.sizes,
        "accounts": args.accounts,
        "job_duration": args.job_duration,
        "job_spread": args.job_spread,
        "scenarios": args.scenarios,
        "shapes": args.shapes,
        "hold_jobs": args.hold_jobs,
        "async_jobs": args.async_jobs,
        "transports": args.transport,
        "dialect": args.dialect,
        "fifty_jobs": args.fifty_jobs,
        "fifty_repeats": args.fifty_repeats,
        "rtts": args.rtts,
        "network_jobs": args.network_jobs,
        "network_accounts": args.network_accounts,
        # Given twice, a setting's last value wins.
        "proxy_settings": tuple(dict(args.proxy_setting).items()) if args.proxy_setting else None,
        "warmup": args.warmup,
        "request_timeout": args.timeout,
        "seed": args.seed,
    }
    given = {name: value for name, value in chosen.items() if value is not None}
    values = {**{name: getattr(base, name) for name in chosen}, **given, "echo": args.echo}
    return BenchOptions(**values)


def check(options: BenchOptions) -> str | None:
    """Why the options cannot run, or None."""
    counts = (
        options.accounts,
        options.fifty_jobs,
        options.fifty_repeats,
        options.hold_jobs,
        options.async_jobs,
        *options.sizes,
    )
    if min(*counts, options.network_jobs, options.network_accounts) < 1:
        return (
            "--accounts, --fifty-jobs, --fifty-repeats, --hold-jobs, --async-jobs, --sizes, "
            "--network-jobs and --network-accounts must be at least 1"
        )
    if options.warmup < 0:
        return "--warmup must not be negative"
    if options.job_duration < 0 or options.job_spread < 0 or options.request_timeout <= 0:
        return "--job-duration and --job-spread must not be negative, --timeout above 0"
    if not options.scenarios or not options.transports:
        return "choose at least one scenario and one transport"
    try:
        Settings.load(env=proxy_environment(options, options.transports[0]))
    except ConfigError as exc:
        return f"--proxy-setting: {exc}"
    return None


async def bench(options: BenchOptions, console: Console) -> tuple[BenchResults, dict[str, object]]:
    """Run every scenario and print the tables; returns the results and their document."""
    errors = Console(stderr=True)
    machine = machine_info()
    began = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def progress(message: str) -> None:
        errors.print(f"[dim]{time.monotonic() - began:6.1f} s[/]  {message}", highlight=False)

    results = await run_bench(options, progress)
    print_report(results, console)
    document = results_document(
        results, machine=machine, started_at=started_at, duration_s=time.monotonic() - began
    )
    return results, document


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = options_from(args)
    if problem := check(options):
        parser.error(problem)
    # Children inherit the limit: the servers and the generator each hold every request.
    raise_open_file_limit(
        files_needed(
            max((*options.sizes, options.fifty_jobs, options.network_jobs, options.hold_jobs))
        )
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=WIDE_OUTPUT)
    try:
        results, document = asyncio.run(bench(options, console))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"results: {args.output}")
        if args.plot is not None:
            for path in write_plot(results, args.plot):
                console.print(f"plot: {path}")
    except (ServerFailed, LoadFailed, PlotUnavailable) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return BENCH_FAILED
    return TARGET_MISSED if args.strict and not document["passed"] else EXIT_OK


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
