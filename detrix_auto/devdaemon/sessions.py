"""Connections and their DAP sessions: register, attach, detach, and the reader callbacks.

Why it exists: a registration is a small state machine (connecting, connected,
failed, disconnected) around the exact DAP sequence the real daemon runs before
it answers (CONTRACT.md section 3: ``initialize``, ``attach``,
``configurationDone``, then every stored logpoint), its "just close the socket"
teardown, and the session's events (output, breakpoint, terminated, close).
That lifecycle, and the connection rows it keeps, is this module's one concern;
logpoints are sent by :mod:`.install` and hits recorded by :mod:`.hits`.

Concurrency: the DAP exchanges of one connection run under its ``op_lock``, never
under the state lock; the event and close callbacks run on the session's reader
thread and ignore a session that a newer one (``generation``) has replaced.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from .dap import DapClient, DapError, PendingRequest
from .hits import Hits
from .install import Installer
from .metrics import Codes, ServiceError
from .output import OutputParser
from .records import (
    STATUS_CONNECTED,
    STATUS_CONNECTING,
    STATUS_DISCONNECTED,
    STATUS_FAILED,
    ConnectionRecord,
    connection_id_for,
)
from .state import Connection, DaemonState
from .store import now_micros

# The logger the daemon has always reported callback failures under.
_log = logging.getLogger("detrix_auto.devdaemon.server")

#: Exactly the ``initialize`` arguments of the Rust daemon (CONTRACT.md 3.3).
INITIALIZE_ARGUMENTS: dict[str, Any] = {
    "clientID": "detrix",
    "clientName": "Detrix",
    "adapterID": "python",
    "linesStartAt1": True,
    "columnsStartAt1": True,
    "pathFormat": "path",
}
#: Exactly the ``attach`` arguments of the Rust daemon (CONTRACT.md 3.4).
ATTACH_ARGUMENTS: dict[str, Any] = {"justMyCode": False, "subProcess": True, "redirectOutput": True}


class Sessions:
    """Registers connections, attaches to and detaches from their debugpy."""

    def __init__(self, state: DaemonState, installer: Installer, hits: Hits) -> None:
        self._state = state
        self._installer = installer
        self._hits = hits

    # -- the connection rows --------------------------------------------------------------

    def records(self) -> dict[str, ConnectionRecord]:
        """A snapshot copy of every stored connection row."""
        with self._state.lock:
            return {cid: dataclasses.replace(c.record) for cid, c in self._state.conns.items()}

    def connection_json(self, connection_id: str) -> dict[str, Any]:
        with self._state.lock:
            conn = self._state.conns.get(connection_id)
            if conn is None:
                raise ServiceError(
                    404, Codes.CONNECTION_NOT_FOUND, f"connection {connection_id!r} not found"
                )
            return conn.record.to_json()

    def connections_json(self, active_only: bool = False) -> list[dict[str, Any]]:
        """Every row, most recently active first (as the real daemon orders them)."""
        with self._state.lock:
            rows = [
                c.record
                for c in self._state.conns.values()
                if not active_only or c.record.status in (STATUS_CONNECTED, STATUS_CONNECTING)
            ]
            rows.sort(key=lambda r: r.last_active_at, reverse=True)
            return [r.to_json() for r in rows]

    def cleanup_connections(self) -> int:
        """``POST /api/v1/connections/cleanup``: drop disconnected and failed rows."""
        state = self._state
        with state.lock:
            gone = [
                cid
                for cid, c in state.conns.items()
                if c.record.status in (STATUS_DISCONNECTED, STATUS_FAILED) and c.client is None
            ]
            for cid in gone:
                del state.conns[cid]
            return len(gone)

    # -- register and unregister ----------------------------------------------------------

    def register(self, fields: dict[str, Any]) -> tuple[ConnectionRecord, bool]:
        """Register or reuse a connection; returns (record copy, attached_now).

        ``ServiceError`` 400 for values the daemon cannot use (the real daemon
        answers those with 500), 500 when the DAP attach fails.
        """
        state = self._state
        for key in ("host", "name", "workspaceRoot", "language"):
            if not fields[key].strip():
                raise ServiceError(400, Codes.INVALID_REQUEST, f"{key} must not be empty")
        if fields["port"] < 1024:
            raise ServiceError(400, Codes.INVALID_REQUEST, f"port {fields['port']} is below 1024")
        language = fields["language"].strip().lower()
        if language != "python":
            raise ServiceError(
                400,
                Codes.INVALID_REQUEST,
                f"language {fields['language']!r}: the embedded daemon attaches to Python "
                "(debugpy) only",
            )
        cid = connection_id_for(
            fields["name"], language, fields["workspaceRoot"], fields["hostname"]
        )
        with state.lock:
            if state.stopped:
                raise ServiceError(500, Codes.INTERNAL_ERROR, "daemon is stopping")
            conn = state.conns.get(cid)
            if conn is None:
                conn = Connection(
                    ConnectionRecord(
                        connection_id=cid,
                        host=fields["host"],
                        port=fields["port"],
                        language=language,
                        name=fields["name"],
                        workspace_root=fields["workspaceRoot"],
                        hostname=fields["hostname"],
                    )
                )
                state.conns[cid] = conn
        with conn.op_lock:
            with state.lock:
                conn.record.last_active_at = now_micros()
                if conn.is_live():
                    state.registrations += 1
                    return dataclasses.replace(conn.record), False
                record = conn.record
                record.host = fields["host"]
                record.port = fields["port"]
                record.pid = fields["pid"]
                record.safe_mode = fields["safeMode"]
                record.status = STATUS_CONNECTING
                record.last_error = None
            try:
                self._attach(conn)
            except DapError as exc:
                message = f"DAP attach to 127.0.0.1:{fields['port']} failed: {exc}"
                self.drop_client(conn, message, status=STATUS_FAILED)
                with state.lock:
                    conn.record.last_error = message
                raise ServiceError(500, Codes.ADAPTER_ERROR, message) from exc
            with state.lock:
                conn.record.status = STATUS_CONNECTED
                conn.record.connected_at = now_micros()
                state.registrations += 1
                state.attaches += 1
                return dataclasses.replace(conn.record), True

    def _attach(self, conn: Connection) -> None:
        """CONTRACT.md section 3, steps 1-6. Called with ``conn.op_lock`` held."""
        state = self._state
        port = conn.record.port
        deadline = time.monotonic() + state.attach_timeout
        with state.lock:
            released = state.port_released.get(port)
            conn.generation += 1
            generation = conn.generation
            conn.parser = OutputParser()
        if released is not None:
            pause = released + state.reattach_grace - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))

        def on_event(message: dict[str, Any]) -> None:
            self._on_event(conn, generation, message)

        def on_close(reason: str) -> None:
            self._on_close(conn, generation, port, reason)

        client = DapClient.connect(
            "127.0.0.1",
            port,
            timeout=max(0.1, deadline - time.monotonic()),
            on_event=on_event,
            on_close=on_close,
            name=conn.record.connection_id[:8],
        )
        with state.lock:
            conn.client = client
            stopped = state.stopped
        if stopped:  # stop() ran while we connected: it could not see this socket
            raise DapError("daemon is stopping")

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DapError(f"attach did not complete within {state.attach_timeout:.1f}s")
            return left

        client.request("initialize", INITIALIZE_ARGUMENTS, timeout=remaining())
        attach: PendingRequest = client.send_request("attach", ATTACH_ARGUMENTS)
        try:
            client.request("configurationDone", timeout=remaining())
        except DapError as exc:
            # debugpy answers the refused attach first ("already being debugged");
            # that message explains the failure better than configurationDone's.
            if attach.done:
                try:
                    attach.wait(0)
                except DapError as attach_exc:
                    raise attach_exc from exc
            raise
        # Every stored, enabled metric of this connection, before the 201 (the real
        # daemon syncs stored metrics on register too): this is what brings them
        # back after a sleep and a new wake.
        for path in self._installer.file_metrics(conn.record.connection_id):
            self._installer.set_breakpoints(conn, client, path, deadline)

    def drop_client(
        self, conn: Connection, reason: str, *, status: int = STATUS_DISCONNECTED
    ) -> None:
        """Close ``conn``'s DAP socket (no ``disconnect``) and forget its installs."""
        state = self._state
        with state.lock:
            client, conn.client = conn.client, None
            conn.generation += 1
            conn.record.status = status
            self._installer.clear(conn)
            if client is not None:
                state.port_released[conn.record.port] = time.monotonic()
        if client is not None:
            client.close(reason)

    def unregister(self, connection_id: str) -> bool:
        """Close the connection's session, keep its row; False for an unknown id."""
        state = self._state
        with state.lock:
            conn = state.conns.get(connection_id)
            if conn is None:
                return False
        # op_lock: an unregister that races a register of the same id waits for that
        # attach to finish, then closes it, instead of failing it half-way.
        with conn.op_lock:
            with state.lock:
                state.unregistrations += 1
                conn.record.last_active_at = now_micros()
            self.drop_client(conn, "unregistered")
        return True

    # -- DAP callbacks (reader threads) --------------------------------------------------

    def _on_close(self, conn: Connection, generation: int, port: int, reason: str) -> None:
        state = self._state
        with state.lock:
            state.port_released[port] = time.monotonic()
            if conn.generation != generation:
                return  # we closed it ourselves, or a newer session replaced it
            conn.client = None
            self._installer.clear(conn)
            if conn.record.status == STATUS_CONNECTED:
                conn.record.status = STATUS_DISCONNECTED
                conn.record.last_error = f"DAP connection lost: {reason}"

    def _on_event(self, conn: Connection, generation: int, message: dict[str, Any]) -> None:
        state = self._state
        event = message.get("event")
        body = message.get("body")
        if not isinstance(body, dict):
            body = {}
        if event == "terminated":
            # debugpy's separate adapter does not close our socket when the debuggee
            # dies: it sends "terminated" and waits for us. End the session so the
            # row shows disconnected (and the orphaned adapter can exit).
            with state.lock:
                client = conn.client if conn.generation == generation else None
            if client is not None:
                client.close("debuggee terminated")
            return
        if event == "breakpoint":
            self._installer.on_breakpoint_event(conn, body)
            return
        if event != "output":
            return
        category = body.get("category", "console")
        text = body.get("output")
        if not isinstance(text, str):
            return
        with state.lock:
            listeners = list(state.output_callbacks) if conn.generation == generation else []
        for listener in listeners:
            try:
                listener(conn.record.connection_id, str(category), text)
            except Exception:  # noqa: BLE001 - a listener must not kill the session
                _log.exception("on_output callback failed")
        if category == "stdout":
            self._hits.on_stdout(conn, generation, text)
        elif category in ("stderr", "console", "important"):
            state.note(conn, text.rstrip("\r\n"))
