"""``python -m bench.demo`` (``make demo``): the whole system on loopback, once.

Starts ``jobserver`` and ``jobproxy`` on free ports, runs ``jobclient`` with 50 jobs
through the proxy, prints its report, and stops both servers whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from bench.harness import ServerFailed, run_server, script_path

JOBS = 50
DEADLINE = 5.0
CLIENT_GRACE = 2.0  # seconds the interrupted client gets to say so


async def demo() -> int:
    async with run_server(["jobserver", "--host", "127.0.0.1", "--port", "0"]) as jobserver:
        print(f"job server: {jobserver.url}", flush=True)
        proxy_argv = ["jobproxy", "--host", "127.0.0.1", "--port", "0"]
        async with run_server([*proxy_argv, "--upstream-url", jobserver.url]) as proxy:
            print(f"proxy:      {proxy.url}", flush=True)
            argv = ["--url", f"{proxy.url}/proxy", "--account", "demo", "--jobs", str(JOBS)]
            argv += ["--deadline", str(DEADLINE)]
            print(f"$ jobclient {' '.join(argv)}", flush=True)
            client = await asyncio.create_subprocess_exec(script_path("jobclient"), *argv)
            try:
                return await client.wait()
            except asyncio.CancelledError:
                # Ctrl-C reaches the whole process group: the client, interrupted too,
                # says so itself; give it a moment before the servers stop under it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.wait(), CLIENT_GRACE)
                raise
            finally:
                if client.returncode is None:
                    client.kill()
                    await client.wait()


def main() -> int:
    try:
        return asyncio.run(demo())
    except ServerFailed as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; both servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
