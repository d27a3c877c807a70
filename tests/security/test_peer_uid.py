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

from detrix_auto.control import auth

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
            raise auth._Unavailable

        monkeypatch.setattr(auth, "_diag_owner", unavailable)
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
                assert auth.peer_uid(peer, conn.getsockname()) == other_user[0]
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "closed"
                # Closed by its owner, before we look: reported as uid 0, inode 0.
                assert auth.peer_uid(peer, conn.getsockname()) is None
        finally:
            proc.kill()
            proc.communicate(timeout=10)


def test_our_own_socket_is_ours(lookup):
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, peer = server.accept()
        with client, conn:
            assert auth.peer_uid(peer, conn.getsockname()) == os.geteuid()
            assert auth.peer_uid(("127.0.0.1", 1), conn.getsockname()) is None  # no such socket
