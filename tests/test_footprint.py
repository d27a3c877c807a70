"""What detrix-auto does to the host's resources: nothing that is not its own.

Every test runs a real application as a subprocess, started with
``DETRIX_ENABLE=1`` (or 0 for the baseline), and compares what the application
itself sees: its descriptors, threads, signal handlers, stdio, environment,
working directory, ``sys.path``, hooks and warning filters, in every phase:
disabled, sleeping, after a status request, awake, after sleep. The table in
docs/host-footprint.md is what these tests check.

The fork tests run on 3.12 and 3.13 (pyenv's interpreters, through the
``sitecustomize`` shim that ``detrix-auto run`` uses): CPython warns there about
every fork of a multi-threaded process, and a sleeping process must not make
the host's forks warn.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


# -- the status answered without building the client ---------------------------------


def test_a_status_without_the_client_says_what_a_fresh_client_says(home):
    """``status`` and ``info`` of a never-woken process come from the settings
    (building the client costs megabytes): the same documents, key for key and
    in the same order, as a freshly built client gives."""
    from detrix_auto import _runtime
    from detrix_auto.config import resolve
    from detrix_auto.control.server import ControlServer
    from detrix_auto.lifecycle import Client

    for overrides in (
        {},
        {"daemon_url": "http://127.0.0.1:9", "name": "view", "control_host": "127.0.0.1"},
    ):
        settings = resolve({"detrix_home": str(home), **overrides}, environ={})
        server = ControlServer(settings.control_host, 0, lambda: None)
        try:
            client = Client(settings)
            client.control = server
            view = _runtime._ClientView(settings, server)
            assert list(view.fresh_status().items()) == list(client.status().items())
            assert list(view.fresh_info().items()) == list(client.info().items())
        finally:
            server.close()


# -- JSON without json ------------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers() | st.none(), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_responses_are_written_exactly_as_json_writes_them(value):
    """``http.dumps`` (no ``json`` loaded for a status answer) is ``json.dumps`` with
    compact separators, character for character, on every kind of value."""
    from detrix_auto.control.http import dumps

    assert dumps(value) == json.dumps(value, separators=(",", ":"))


def test_a_request_compares_and_prints_like_the_dataclass_it_was():
    from detrix_auto.control.http import Request, parse_request

    request, used = parse_request(b"GET /detrix/status?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert used > 0 and request is not None
    same = Request("GET", "/detrix/status?x=1", "/detrix/status", "HTTP/1.1", {"host": "h"})
    assert request == same and request != Request("GET", "/", "/", "HTTP/1.1")
    assert repr(request) == (
        "Request(method='GET', target='/detrix/status?x=1', path='/detrix/status', "
        "version='HTTP/1.1', headers={'host': 'h'}, body=b'')"
    )
    assert Request("GET", "/", "/", "HTTP/1.1").headers == {}
