"""uvicorn's ``Server``, as ``infra.serving`` and the servers override it: a uvicorn whose
overridden methods change shape fails here, before a server stops out of order."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

import bench.floor
import jobserver.__main__
import proxy.serving.server
import tests.conftest
from infra.serving import OrderlyServer

Kind = Literal["coroutine", "context manager", "plain"]

#: Each method of uvicorn.Server that a subclass of ours overrides, as the override
#: expects it to be in uvicorn: what it is and its parameters. uvicorn calls
#: ``await self.startup(sockets=sockets)``, ``with self.capture_signals():``, and
#: ``infra.serving`` hands ``handle_exit`` to the event loop as a signal handler.
OVERRIDDEN: dict[str, tuple[Kind, list[str]]] = {
    "startup": ("coroutine", ["self", "sockets"]),
    "shutdown": ("coroutine", ["self", "sockets"]),
    "capture_signals": ("context manager", ["self"]),
    "handle_exit": ("plain", ["self", "sig", "frame"]),
}
#: Each method the servers call without overriding it, as they call it.
CALLED: dict[str, tuple[Kind, list[str]]] = {
    "run": ("plain", ["self", "sockets"]),
    "serve": ("coroutine", ["self", "sockets"]),
}
#: The subclasses of uvicorn.Server that the code and its tests run.
OURS = (
    OrderlyServer,
    proxy.serving.server.ProxyServer,
    jobserver.__main__.JobServerProcess,
    bench.floor.FloorServer,
    tests.conftest._ServerInTest,
)


def kind_of(method: Callable[..., Any]) -> Kind:
    """Whether ``method`` is a coroutine function, a ``contextlib.contextmanager`` or
    neither."""
    if inspect.iscoroutinefunction(method):
        return "coroutine"
    wrapped = getattr(method, "__wrapped__", None)
    if wrapped is not None and inspect.isgeneratorfunction(wrapped):
        return "context manager"
    return "plain"


def shape(method: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """The parameters of ``method``: name, kind and default (not their annotations, which
    may be spelled differently and mean the same)."""
    return [
        (parameter.name, parameter.kind, parameter.default)
        for parameter in inspect.signature(method).parameters.values()
    ]


def subclasses(cls: type) -> Iterator[type]:
    subclass: type
    for subclass in cls.__subclasses__():
        yield subclass
        yield from subclasses(subclass)


def overrides() -> list[tuple[type, str]]:
    """(subclass, method name) for each method of uvicorn.Server a class of ours overrides."""
    return [
        (cls, name)
        for cls in OURS
        for name, value in vars(cls).items()
        # Constructors are ours to call, with our own arguments.
        if callable(value) and hasattr(uvicorn.Server, name) and name != "__init__"
    ]


def test_every_subclass_of_ours_is_checked() -> None:
    """Each subclass of uvicorn.Server in the code and its tests is one of those checked."""
    ours = {
        cls
        for cls in subclasses(uvicorn.Server)
        if cls.__module__.split(".")[0] in ("infra", "proxy", "jobserver", "bench", "tests")
    }
    assert ours == set(OURS)


def test_only_the_expected_methods_are_overridden() -> None:
    """A new override of a uvicorn.Server method is listed in OVERRIDDEN, so checked."""
    assert {name for _, name in overrides()} == OVERRIDDEN.keys()


@pytest.mark.parametrize("name", [*OVERRIDDEN, *CALLED])
def test_uvicorn_has_the_method_as_expected(name: str) -> None:
    """uvicorn.Server still has the method, of the same kind and with the same parameters."""
    kind, parameters = (OVERRIDDEN | CALLED)[name]
    method = getattr(uvicorn.Server, name, None)
    assert method is not None, f"uvicorn.Server.{name} is gone"
    assert kind_of(method) == kind, f"uvicorn.Server.{name} is no longer a {kind}"
    assert [parameter for parameter, _, _ in shape(method)] == parameters


@pytest.mark.parametrize(
    ("cls", "name"), overrides(), ids=lambda value: getattr(value, "__name__", value)
)
def test_each_override_has_the_shape_of_uvicorns_method(cls: type, name: str) -> None:
    """An override is of the kind of uvicorn's method and takes the same parameters, so
    uvicorn's own calls of it (by keyword too) still reach it."""
    base = getattr(uvicorn.Server, name)
    override = vars(cls)[name]
    assert kind_of(override) == kind_of(base)
    assert shape(override) == shape(base)


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """No app is served: only the server's state is looked at."""


def test_the_server_state_the_servers_read_is_there() -> None:
    """The servers read ``started``, ``should_exit`` and the lifespan's ``state``."""
    config = uvicorn.Config(_app, lifespan="on")
    server = uvicorn.Server(config)
    assert server.started is False
    assert server.should_exit is False
    config.load()
    lifespan = config.lifespan_class(config)
    assert isinstance(lifespan.state, dict)
