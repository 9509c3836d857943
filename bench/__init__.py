"""Benchmarks of the proxy against the simulated job server, on loopback.

``python -m bench`` starts ``jobserver`` and ``jobproxy`` as processes of their own, drives
them from a third (the load generator, :mod:`bench.load`), prints tables and writes JSON:

- ``fifty``: 50 held requests on one account through the proxy, against the lower bound
  (one job duration plus 50 serialized ``/start`` handlings, timed on the same server);
- ``scale``: 1,000 / 5,000 / 10,000 held requests over 100 accounts through the proxy,
  against the same number sent straight to the job server on one account each (the best
  any client could do without a proxy), with the proxy's memory and CPU per request;
- ``floor``: the largest size held by the serving stack alone (:mod:`bench.floor`, a raw
  ASGI app under the proxy's uvicorn configuration), to show the proxy's own share;
- ``network``: at round trips of 0, 20, 100 and 200 ms to the job server (its simulated
  latency), 50 jobs on one account and 1,000 over 20 accounts through the proxy, against
  the lower bound the protocol allows (one job, one round trip, one account's starts).

Every scenario runs in the dialect ``--dialect`` names (:mod:`bench.dialects`): the work
sample's (the default) or the predictions API's, spoken by the job server, the proxy
and the load generator alike.

Modules: :mod:`bench.options` (what shapes a bench), :mod:`bench.servers` (starting the
servers under test), :mod:`bench.scenarios` (what runs), :mod:`bench.load`,
:mod:`bench.http`, :mod:`bench.dialects` and :mod:`bench.outcomes` (the generator, its
requests on the project's HTTP/1.1 client :mod:`infra.http1`, the APIs it speaks, and
what an answer means), :mod:`bench.floor` (the serving stack alone), :mod:`bench.procfs`
(what a process spent), :mod:`bench.counters` (the proxy's own counters),
:mod:`bench.stats` (the arithmetic), :mod:`bench.targets` (the verdicts),
:mod:`bench.report` (tables, JSON), :mod:`bench.plot` (the PNGs), :mod:`bench.system`
(machine, open-file limit).

Beside the benchmarks, the project's other tools that drive both servers at once:
:mod:`bench.harness` (start a server's console script and wait for its ready line; the
benchmarks, the demo and the end-to-end tests all use it) and :mod:`bench.demo`
(``make demo``).
"""
