"""What every doctor check shares: the :class:`Finding` it yields and the interpreter probe.

Kept apart, at the bottom of the package, so that each check module depends on
this one and on none of its siblings. :data:`PROBE` is run here (this
interpreter's facts) and, as ``-c``, in another process's interpreter
(``uninstrumented``), so both see the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Facts about an interpreter, run in it (also in another one, as ``-c``).
#: Plain code, no annotations: the other interpreter may be any version.
PROBE = r"""
import importlib.util, json, os, site, sys
def _facts():
    dirs = []
    try:
        dirs.extend(site.getsitepackages())
    except Exception:
        # Very old virtualenvs have no getsitepackages(): their site dirs are on sys.path.
        dirs.extend(p for p in sys.path
                    if os.path.basename(p) in ("site-packages", "dist-packages"))
    user = None
    try:
        user = site.getusersitepackages()
        dirs.append(user)
    except Exception:
        pass
    seen = []
    for d in dirs:
        if d and d not in seen:
            seen.append(d)
    def found(name):
        return [d for d in seen if os.path.isfile(os.path.join(d, name))]
    def origin(module):
        try:
            spec = importlib.util.find_spec(module)
        except Exception:
            return None
        return None if spec is None else spec.origin
    return {
        "executable": sys.executable,
        "version": sys.version.split()[0],
        "site_dirs": seen,
        "user_site": user,
        "user_site_enabled": bool(site.ENABLE_USER_SITE),
        "no_site": bool(sys.flags.no_site),
        "pth": found("detrix_auto.pth"),
        "start": found("detrix_auto.start"),
        "package": origin("detrix_auto"),
        "debugpy": origin("debugpy"),
        "urllib3": origin("urllib3"),
        "sitecustomize": origin("sitecustomize"),
        "usercustomize": origin("usercustomize"),
    }
"""


@dataclass
class Finding:
    check: str
    level: str  # "ok", "warn" or "error"
    text: str
    fix: str = ""


def local_facts() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(PROBE, namespace)  # noqa: S102 - our own constant, shared with the remote probe
    facts: dict[str, Any] = namespace["_facts"]()
    return facts


def hook_files() -> tuple[list[str], list[str]]:
    """Site directories of this interpreter holding ``detrix_auto.pth`` / ``.start``."""
    facts = local_facts()
    return list(facts["pth"]), list(facts["start"])
