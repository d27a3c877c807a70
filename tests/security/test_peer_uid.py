"""Who owns the other end of a loopback connection: both ways of asking the kernel.

``sock_diag`` (netlink) is used where it answers; ``/proc/net/tcp{,6}`` is the
fallback. Both must name another user's live socket as that user's, our own
as ours, and a socket already closed by its owner as unknown (the kernel
reports it as uid 0, which must not pass for root).
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
from sechelpers import spawn_as_other_user

from detrix_auto import netowner

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

HOLD = """\
sock = connect(job["address"])
print(sock.getsockname()[1], flush=True)
sys.stdin.readline()  # hold the connection open until told
sock.close()
print("closed", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(params=["sock_diag", "proc"])
def lookup(request, monkeypatch):
    if request.param == "proc":

        def unavailable(*args):
            raise netowner._Unavailable

        monkeypatch.setattr(netowner, "_diag_lookup", unavailable)
    return request.param


@pytest.mark.parametrize(
    ("listen", "connect_to"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
    ],
)
def test_another_users_socket_is_theirs_until_they_close_it(lookup, other_user, listen, connect_to):
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family) as server:
        server.bind((listen, 0))
        server.listen()
        server.settimeout(15)
        port = server.getsockname()[1]
        proc = spawn_as_other_user(other_user, HOLD, address=[connect_to, port])
        try:
            assert proc.stdout is not None and proc.stdin is not None
            conn, peer = server.accept()
            with conn:
                assert int(proc.stdout.readline()) == peer[1]
                assert netowner.peer_uid(peer, conn.getsockname()) == other_user[0]
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "closed"
                # Closed by its owner, before we look: reported as uid 0, inode 0.
                assert netowner.peer_uid(peer, conn.getsockname()) is None
        finally:
            proc.kill()
            proc.communicate(timeout=10)


def test_our_own_socket_is_ours(lookup):
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, peer = server.accept()
        with client, conn:
            assert netowner.peer_uid(peer, conn.getsockname()) == os.geteuid()
            assert netowner.peer_uid(("127.0.0.1", 1), conn.getsockname()) is None  # no such socket


def test_a_listener_is_never_a_peer(lookup):
    """Asked for a connection that does not exist, the kernel names a listener: not an answer."""
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        # No connection 127.0.0.3:port -> 127.0.0.1:port exists; the kernel's
        # lookup falls back to the wildcard listener on port.
        assert netowner.peer_uid(("127.0.0.3", port), ("127.0.0.1", port)) is None
        assert netowner.find_established(("127.0.0.3", port), ("127.0.0.1", port)) is None


LISTEN = """\
sock = socket.socket(socket.AF_INET6 if ":" in job["host"] else socket.AF_INET)
sock.bind((job["host"], 0))
sock.listen()
print(sock.getsockname()[1], flush=True)
conn = None
if sys.stdin.readline().strip() == "accept":
    conn, _ = sock.accept()
    print("accepted", flush=True)
    sys.stdin.readline()
"""


def _listening_as(other_user, host):
    proc = spawn_as_other_user(other_user, LISTEN, host=host)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@pytest.mark.parametrize(
    ("bind", "ask"),
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.5"), ("::", "127.0.0.1"), ("::1", "::1")],
)
def test_listener_names_the_owner_of_the_socket_a_connect_would_reach(
    lookup, other_user, bind, ask
):
    proc, port = _listening_as(other_user, bind)
    try:
        found = netowner.listener(ask, port)
        assert found is not None and found.state == netowner.TCP_LISTEN
        assert found.uid == other_user[0] and found.inode
        assert netowner.listener_uid(ask, port) == other_user[0]
        assert netowner.process_holds(proc.pid, found.inode) is True
        assert netowner.process_holds(os.getpid(), found.inode) is False
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert netowner.listener(ask, port) is None


def test_the_server_end_of_our_connection_is_the_servers_before_and_after_accept(
    lookup, other_user
):
    proc, port = _listening_as(other_user, "127.0.0.1")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
            # Not accepted yet: the connection waits on the other user's listener.
            waiting = netowner.server_end(client)
            assert waiting is not None and waiting.uid == other_user[0]
            assert waiting.state == netowner.TCP_LISTEN
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("accept\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "accepted"
            accepted = netowner.server_end(client)
            assert accepted is not None and accepted.state == netowner.TCP_ESTABLISHED
            assert accepted.uid == other_user[0]
            assert accepted.local == ("127.0.0.1", port)
            assert accepted.remote == client.getsockname()
            assert netowner.process_holds(proc.pid, accepted.inode) is True
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_our_own_server_end_is_ours(lookup):
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=15) as client:
            found = netowner.server_end(client)
            assert found is not None and found.uid == os.geteuid()
            assert netowner.process_holds(os.getpid(), found.inode) is True


def test_describe_uid_names_the_user(other_user):
    assert netowner.describe_uid(other_user[0]) == f"uid {other_user[0]} (detrixsec)"
    assert netowner.describe_uid(4_000_000_000) == "uid 4000000000"


HALF_CLOSE = """\
sock = connect(job["address"])
sock.shutdown(socket.SHUT_WR)  # request sent, waiting for the answer
print(sock.getsockname()[1], flush=True)
sys.stdin.readline()
"""


def test_a_half_closed_client_is_still_its_owners(lookup, other_user):
    """A client that shut down its sending side (FIN_WAIT2) still holds its socket."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(15)
        proc = spawn_as_other_user(other_user, HALF_CLOSE, address=list(server.getsockname()))
        try:
            assert proc.stdout is not None
            conn, peer = server.accept()
            with conn:
                assert int(proc.stdout.readline()) == peer[1]
                assert conn.recv(1) == b""  # the FIN arrived: the peer is half-closed
                assert netowner.peer_uid(peer, conn.getsockname()) == other_user[0]
        finally:
            proc.kill()
            proc.communicate(timeout=10)
