"""The daemon client's two transports against a real HTTP(S) server (the fault double).

``http://`` goes through ``http.client`` on one kept connection; ``https://``
through urllib3's pool (detrix_auto/daemon.py says why). Both keep the same
promises: the same answers, the same words for the same failures, a deadline
for the whole call; the e2e, fault and daemon-identity tests run them inside
real apps. Here: what only one of them does (reuse and renew the kept
connection, a base path, TLS with and without the CA).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from doubles import Fault, FaultDaemon

from detrix_auto.daemon import HttpDaemonClient
from detrix_auto.errors import DaemonError


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A self-signed certificate for 127.0.0.1 (its own CA), made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    yield str(cert), str(key)


def test_plain_http_keeps_one_connection_and_never_loads_urllib3() -> None:
    code = (
        "import sys\n"
        "sys.modules['urllib3'] = None\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from doubles import FaultDaemon\n"
        "from detrix_auto.daemon import HttpDaemonClient\n"
        "with FaultDaemon() as d:\n"
        "    c = HttpDaemonClient(d.url)\n"
        "    for _ in range(3):\n"
        "        assert c.health(5)['service'] == 'detrix'\n"
        "    print(len(d.peers))\n"
    )
    here = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", code, here], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1", "three calls, one connection"


def test_a_kept_connection_the_daemon_closed_is_replaced() -> None:
    with FaultDaemon() as double:
        client = HttpDaemonClient(double.url)
        client.health(5)
        double.faults["health"] = Fault(close_mid_reply=True)
        with pytest.raises(DaemonError, match="closed the connection mid-reply"):
            client.health(5)
        del double.faults["health"]
        assert client.health(5)["service"] == "detrix"  # on a new connection
        assert len(double.peers) == 2
        client.close()


def test_a_base_path_in_the_daemon_url_is_kept() -> None:
    with FaultDaemon() as double:
        client = HttpDaemonClient(double.url + "/detrix-api/")
        assert client.health(5)["service"] == "detrix"
        assert [call[1] for call in double.calls] == ["/detrix-api/health"]
        client.close()


def test_the_deadline_bounds_a_plain_call_whatever_the_daemon_does() -> None:
    with FaultDaemon() as double:
        double.faults["health"] = Fault(hang=True)
        client = HttpDaemonClient(double.url)
        started = time.monotonic()
        with pytest.raises(DaemonError, match="did not answer within 0.5s"):
            client.health(0.5)
        assert time.monotonic() - started < 3
        client.close()


def test_https_with_the_ca_works(certificate: tuple[str, str]) -> None:
    cert, _ = certificate
    with FaultDaemon(tls=certificate) as double:
        client = HttpDaemonClient(double.url, ca_bundle=cert)
        assert client.health(5)["service"] == "detrix"
        with pytest.raises(DaemonError, match=r"refused the unregistration \(HTTP 500"):
            client.unregister("c1", None, 5)  # the double has no backend: a real answer
        client.close()


def test_https_without_the_ca_is_a_tls_error_that_says_what_to_do(
    certificate: tuple[str, str],
) -> None:
    with FaultDaemon(tls=certificate) as double:
        client = HttpDaemonClient(double.url)
        with pytest.raises(DaemonError, match="TLS to the daemon at .* DETRIX_CA_BUNDLE"):
            client.health(5)
        client.close()
        unverified = HttpDaemonClient(double.url, verify_ssl=False)
        assert unverified.health(5)["service"] == "detrix"
        unverified.close()


def test_https_honours_the_deadline_too(certificate: tuple[str, str]) -> None:
    cert, _ = certificate
    with FaultDaemon(tls=certificate) as double:
        double.faults["health"] = Fault(hang=True)
        client = HttpDaemonClient(double.url, ca_bundle=cert)
        started = time.monotonic()
        with pytest.raises(DaemonError, match="did not answer within 0.5s"):
            client.health(0.5)
        assert time.monotonic() - started < 3
        client.close()


def test_a_call_never_waits_for_another_threads_call() -> None:
    """The keeper's slow liveness read must not hold a sleep's unregister: each call
    is bounded by its own deadline alone (a second connection is opened)."""
    import threading

    with FaultDaemon() as double:
        client = HttpDaemonClient(double.url)
        client.health(5)
        double.faults["get"] = Fault(delay=3)

        def slow_read() -> None:
            with pytest.raises(DaemonError):  # the double has no backend: 500 after 3 s
                client.connection("c1", None, 5)

        slow = threading.Thread(target=slow_read, daemon=True)
        slow.start()
        time.sleep(0.3)  # the slow call holds the kept connection now
        started = time.monotonic()
        with pytest.raises(DaemonError, match=r"refused the unregistration \(HTTP 500"):
            client.unregister("c1", None, 2)
        assert time.monotonic() - started < 1.5
        slow.join(10)
        client.close()
