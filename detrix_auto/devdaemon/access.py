"""Who may use the embedded daemon: the rule, stated once, for every route but health.

The embedded daemon can make debugpy attach to a local port and run
expressions in a process, and it lists the connections it has (pid, debug
port, workspace), so it must not serve another local user. Two kinds of
caller are served:

* **the owner**: whoever presents the daemon's token, or a caller proven to
  run as our own user (or root): loopback, no proxy or browser headers, a
  loopback ``Host``, and, on Linux, a peer socket owned by our uid or root,
  asked of the kernel. These are the control plane's rules
  (``control/auth.py``), reused rather than restated.
* **an app registering itself** (``POST /api/v1/connections``, ``GET`` and
  ``DELETE /api/v1/connections/{id}``): additionally, whoever presents one of
  the ``app_tokens``, or a local caller running as one of the ``app_uids``. An
  app sends its *own* token (``DETRIX_TOKEN``) when it registers, and runs as
  its own user; ``observe`` knows both and names them here.

A token that is presented and matches nothing is refused, as the control plane
does. Where the kernel cannot tell who a local caller is (not Linux), a
caller without a token is served only when the daemon has no token at all (it
then said so on start) or on the app routes; with a token, the owner routes
need it. ``require_token`` turns the own-user exemption off altogether.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from ..control.auth import _bearer, classify
from ..control.http import Request

__all__ = ["Access"]


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())


@dataclass(frozen=True)
class Access:
    """The daemon's access rule; :meth:`refusal` is None for a caller it serves."""

    token: str | None = None
    app_tokens: frozenset[str] = field(default_factory=frozenset)
    app_uids: frozenset[int] = field(default_factory=frozenset)
    require_token: bool = False

    @property
    def authenticated(self) -> bool:
        """False: no token of any kind, bearer headers are ignored (tests, a bare ``-m`` run)."""
        return bool(self.token or self.app_tokens)

    def refusal(
        self,
        request: Request,
        peer: Any,
        local: Any,
        *,
        app_route: bool,
        cache: dict[str, Any] | None = None,
    ) -> str | None:
        """Why this request is refused (a sentence for the 401), or None to serve it."""
        presented = _bearer(request.header("authorization"))
        if presented is not None and self.authenticated:
            if self.token and _same(presented, self.token):
                return None
            if app_route and any(_same(presented, t) for t in self.app_tokens):
                return None
            return "invalid token"
        caller = classify(
            request, peer, local, None, require_token=self.require_token, conn_cache=cache
        )
        if caller.local:
            if caller.uid is not None:
                return None  # Linux: the kernel says it is our uid or root
            if not self.authenticated or app_route:
                return None  # cannot tell here; documented
            return "this system cannot tell which user a local caller is; send the daemon's token"
        if (
            app_route
            and caller.uid is not None
            and caller.uid in self.app_uids
            and not self.require_token
        ):
            return None
        return caller.reason or "unauthorized"
