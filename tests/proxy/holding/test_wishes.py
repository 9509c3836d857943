"""The Prefer header parser (RFC 7240): wait and respond-async, the rest ignored."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.holding.wishes import Preferences, parse_prefer

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
quoted = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12).map(
    lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
values = tokens | quoted
parameters = st.lists(st.tuples(tokens, st.none() | values), max_size=3).map(
    lambda items: "".join(
        f";{name}" + ("" if value is None else f"={value}") for name, value in items
    )
)
unknown = st.tuples(
    tokens.filter(lambda name: name.lower() not in ("wait", "respond-async")),
    st.none() | values,
    parameters,
).map(lambda item: item[0] + ("" if item[1] is None else f"={item[1]}") + item[2])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], Preferences()),
        (["wait=10"], Preferences(wait=10.0)),
        (["WAIT = 2.5"], Preferences(wait=2.5)),
        (['wait="7"'], Preferences(wait=7.0)),
        (["wait"], Preferences(wait=math.inf)),
        (["respond-async"], Preferences(respond_async=True)),
        (["respond-async, wait=3"], Preferences(wait=3.0, respond_async=True)),
        (["handling=lenient", "Respond-Async;x=1"], Preferences(respond_async=True)),
        (["wait=5, wait=9"], Preferences(wait=5.0)),
        (["wait=5", "wait=9"], Preferences(wait=5.0)),
        (["wait=soon"], Preferences()),
        (["wait=-1"], Preferences()),
        (['return=minimal; foo="a,b", wait=4'], Preferences(wait=4.0)),
        (["@@@, wait=1"], Preferences(wait=1.0)),
        ([", ,wait=2,,"], Preferences(wait=2.0)),
    ],
)
def test_known_preferences_are_read_and_the_rest_ignored(
    headers: list[str], expected: Preferences
) -> None:
    """wait=N, a bare wait and respond-async are read; unknown ones, parameters and
    malformed items are ignored; a preference given twice counts the first time."""
    assert parse_prefer(headers) == expected


@given(st.lists(st.text(max_size=60), max_size=3))
def test_any_header_value_parses_without_error(headers: list[str]) -> None:
    """Whatever a client sends in Prefer, the parser answers preferences, never an error."""
    preferences = parse_prefer(headers)
    assert preferences.wait is None or preferences.wait >= 0


@given(st.lists(unknown, max_size=4), st.integers(0, 10**6), st.lists(unknown, max_size=4))
def test_wait_is_found_among_any_unknown_preferences(
    before: list[str], seconds: int, after: list[str]
) -> None:
    """A wait among any well-formed unknown preferences is read with its value."""
    header = ", ".join([*before, f"wait={seconds}", *after])
    assert parse_prefer([header]) == Preferences(wait=float(seconds))


@given(st.lists(unknown, min_size=1, max_size=5))
def test_only_unknown_preferences_change_nothing(items: list[str]) -> None:
    """Preferences the proxy does not know are ignored, as RFC 7240 asks."""
    assert not parse_prefer([", ".join(items)]).any
