"""Settings: resolved once, from explicit arguments, then ``DETRIX_*``, then defaults.

An argument counts as explicit whenever it was passed, even when it equals the
default (the original client could not tell the two apart). Every bad value
raises :class:`~detrix_auto.errors.ConfigError` naming where it came from, what
it was and what is accepted, so a person can fix it without reading code.

This module is on the start-up path of every enabled process, so it imports
only what the interpreter has already loaded (``os``): no ``dataclasses``,
``typing``, ``enum`` or ``urllib`` at run time (each costs milliseconds).
"""

from __future__ import annotations

import os

from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = [
    "DEFAULT_DAEMON_URL",
    "control_plane_url",
    "daemon_url_problem",
    "is_ipv4_literal",
    "is_loopback",
    "split_host_port",
    "OPTION_NAMES",
    "Settings",
    "parse_bool",
    "parse_enable",
    "resolve",
    "same_origin",
]

DEFAULT_DAEMON_URL = "http://127.0.0.1:8090"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
START_STATES = ("sleeping", "warm", "awake")
LOG_LEVELS = ("off", "error", "warning", "info", "debug")
MAX_TIMEOUT = 3600.0
#: ``DETRIX_SWITCH_INTERVAL`` bounds: the wake's own short interval, and CPython's default.
MIN_SWITCH_INTERVAL = 0.0001
MAX_SWITCH_INTERVAL = 0.005


_DEFAULTS: dict[str, Any] = {
    "control_host": "127.0.0.1",
    "control_port": 0,
    "debug_host": "127.0.0.1",
    "debug_port": 0,
    "daemon_url": None,
    "daemon_uid": None,
    "token": None,
    "detrix_home": "",
    "health_check_timeout": 2.0,
    "register_timeout": 5.0,
    "unregister_timeout": 2.0,
    "verify_ssl": True,
    "ca_bundle": None,
    "safe_mode": False,
    "start_state": "sleeping",
    "require_token": False,
    "liveness_interval": 5.0,
    "wake_retry_max": 30.0,
    "log_level": "off",
    "discovery": True,
    "advertise_host": None,
    "switch_interval": None,
    "notes": (),
}


class Settings:
    """Everything detrix-auto needs to know, fixed for the life of a client.

    ``daemon_url`` is ``None`` when nobody configured it: the URL is then found
    at wake time (the running daemon's ``daemon.pid`` file, else the default),
    because the daemon may start after the application. Immutable; a plain
    slotted class rather than a dataclass to keep start-up imports minimal.
    """

    __slots__ = ("name_base", *_DEFAULTS)

    name_base: str
    control_host: str
    control_port: int
    debug_host: str
    debug_port: int
    daemon_url: str | None
    #: The one other account whose loopback daemon gets the token and the debug
    #: port (``DETRIX_DAEMON_USER``); ours and root's always do.
    daemon_uid: int | None
    token: str | None
    detrix_home: str
    health_check_timeout: float
    register_timeout: float
    unregister_timeout: float
    verify_ssl: bool
    ca_bundle: str | None
    safe_mode: bool
    start_state: str
    require_token: bool
    liveness_interval: float
    wake_retry_max: float
    log_level: str
    discovery: bool
    #: The host the daemon is told to reach this process by (``DETRIX_HOST``),
    #: when that is not the address the debugger binds (containers, NAT).
    advertise_host: str | None
    #: The GIL switch interval (seconds) the operator asked this process to run
    #: with (``DETRIX_SWITCH_INTERVAL``), or None: the host's own stays.
    switch_interval: float | None
    #: Warnings about accepted-but-odd values, for whoever starts the client to print.
    notes: tuple[str, ...]

    def __init__(self, name_base: str, **values: Any) -> None:
        unknown = set(values) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        object.__setattr__(self, "name_base", name_base)
        for key, default in _DEFAULTS.items():
            object.__setattr__(self, key, values.get(key, default))
        if not self.detrix_home:
            object.__setattr__(self, "detrix_home", default_home())

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (values are trusted: already parsed)."""
        values = {k: getattr(self, k) for k in _DEFAULTS}
        name_base = changes.pop("name_base", self.name_base)
        values.update(changes)
        return Settings(name_base, **values)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Settings are immutable")

    def __repr__(self) -> str:
        shown = {k: getattr(self, k) for k in self.__slots__ if k != "token"}
        shown["token"] = "<set>" if self.token else None
        return f"Settings({shown})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def connection_name(self, pid: int | None = None) -> str:
        """The daemon identity of this process: the base plus the pid.

        The daemon derives the connection id from the name, so two live
        processes (a parent and its forked child included) must differ.
        """
        return f"{self.name_base}-{os.getpid() if pid is None else pid}"

    @property
    def token_files(self) -> tuple[str, ...]:
        """Where the token is looked for when ``DETRIX_TOKEN`` is not set, in order."""
        from .token import token_file_candidates

        return token_file_candidates(self.detrix_home)


# --------------------------------------------------------------------------
# value parsers: each takes the raw value and a label naming where it came from
#
# Messages start with "Invalid <label>=<value>" so that a person grepping for
# the original client's wording ("Invalid DETRIX_CONTROL_PORT") finds ours too.


def _fail(label: str, value: object, accepted: str) -> ConfigError:
    return ConfigError(f"Invalid {label}={value!r}: expected {accepted}")


def parse_bool(value: object, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise _fail(label, value, "one of 1/true/yes/on or 0/false/no/off")


def parse_verify_ssl(value: object, label: str) -> bool:
    """Only a word that means "off" turns TLS verification off, as in the original client.

    Any other word keeps it on (the safe reading of a typo); :func:`resolve`
    notes it so that the person who wrote it hears about it.
    """
    if isinstance(value, str) and value.strip().lower() not in FALSE_WORDS:
        return True
    return parse_bool(value, label)


def parse_enable(value: str | None) -> bool | None:
    """``DETRIX_ENABLE``: True, False, or None for a word we do not know."""
    if value is None:
        return False
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS or word == "":
        return False
    return None


def parse_port(value: object, label: str) -> int:
    accepted = "a whole number from 0 to 65535 (0 lets the system choose)"
    if isinstance(value, bool):
        raise _fail(label, value, accepted)
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        port = int(value.strip())
    else:
        raise _fail(label, value, accepted)
    if not 0 <= port <= 65535:
        raise _fail(label, value, accepted)
    return port


def _seconds(value: object, label: str, accepted: str) -> float:
    """A number (a bool is not one), or the variable's error naming what is accepted."""
    if isinstance(value, bool):
        raise _fail(label, value, accepted)
    try:
        return float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _fail(label, value, accepted) from None


def parse_timeout(value: object, label: str) -> float:
    accepted = f"a number of seconds greater than 0 and at most {MAX_TIMEOUT:g}"
    seconds = _seconds(value, label, accepted)
    if seconds <= 0:
        # The original client's wording, which users may grep their logs for.
        raise ConfigError(f"Invalid {label}={value!r}: Timeout must be positive ({accepted})")
    # NaN fails both comparisons, infinity fails the upper bound.
    if not 0 < seconds <= MAX_TIMEOUT:
        raise _fail(label, value, accepted)
    return seconds


def parse_switch_interval(value: object, label: str) -> float:
    """Seconds, within what CPython's scheduling needs here (see ``_handoff``)."""
    accepted = (
        f"a number of seconds from {MIN_SWITCH_INTERVAL:g} to {MAX_SWITCH_INTERVAL:g} "
        "(Python's default switch interval), e.g. 0.0005"
    )
    seconds = _seconds(value, label, accepted)
    # NaN fails both comparisons, infinity the upper one.
    if not MIN_SWITCH_INTERVAL <= seconds <= MAX_SWITCH_INTERVAL:
        raise _fail(label, value, accepted)
    return seconds


_URL_EXPECTED = "an http:// or https:// URL with a host, e.g. http://127.0.0.1:8090"


def _url_problem(value: object) -> tuple[str, str] | None:
    """What is wrong with a base URL, as (kind, detail), or None when it is usable.

    ``kind`` is ``"format"`` or ``"scheme"``. Checked by hand because
    ``urllib.parse`` is costly to import on the start-up path.
    """
    if not isinstance(value, str):
        return "format", _URL_EXPECTED
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return "format", _URL_EXPECTED
    if scheme.lower() not in ("http", "https"):
        return "scheme", "http:// or https://"
    authority = rest.split("/", 1)[0]
    if any(c in text for c in "?#") or "@" in authority:
        return "format", _URL_EXPECTED + " (no credentials, query or fragment)"
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        return "format", _URL_EXPECTED
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return "format", _URL_EXPECTED
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
    if not host:
        return "format", _URL_EXPECTED
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return "format", _URL_EXPECTED + " and a port from 1 to 65535"
    return None


def parse_url(value: object, label: str) -> str:
    """An http(s) base URL without a trailing slash; ConfigError otherwise."""
    problem = _url_problem(value)
    if problem is not None:
        shown = _without_credentials(value) if isinstance(value, str) else value
        raise _fail(label, shown, problem[1])  # a password in the URL is never echoed
    assert isinstance(value, str)
    return value.strip().rstrip("/")


def daemon_url_problem(value: object) -> str | None:
    """Why ``value`` cannot be used as the daemon's URL, in the original client's words.

    The explicit API accepts a malformed ``daemon_url`` at ``init()`` and fails
    the ``wake()`` that would use it with :class:`~detrix_auto.errors.DaemonError`,
    as the original client did (its own example guards only ``wake()``).
    """
    problem = _url_problem(value)
    if problem is None:
        return None
    kind, expected = problem
    shown = _without_credentials(value) if isinstance(value, str) else value
    if kind == "scheme" and isinstance(value, str):
        scheme = value.strip().partition("://")[0]
        return f"Invalid daemon_url scheme {scheme!r} in {shown!r}: expected {expected}"
    return f"Invalid daemon_url format: {shown!r}; expected {expected}"


def _without_credentials(url: str) -> str:
    """``url`` with whatever precedes its last ``@`` replaced: a password is never echoed."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    return scheme + sep + "<credentials>@" + rest.rsplit("@", 1)[1]


def parse_host(value: object, label: str) -> str:
    accepted = "an IP address or host name such as 127.0.0.1, ::1 or 0.0.0.0"
    if not isinstance(value, str):
        raise _fail(label, value, accepted)
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "/?#@" or not c.isprintable() for c in host):
        raise _fail(label, value, accepted)
    return host


def parse_debug_host(value: object, label: str) -> str:
    """The debugger's listen address: debugpy listens on IPv4 only and resolves no names."""
    host = parse_host(value, label)
    if not is_ipv4_literal(host):
        raise _fail(label, value, "an IPv4 address written out, such as 127.0.0.1 or 0.0.0.0")
    return host


#: Unicode categories refused in names: controls, format characters (bidirectional
#: overrides, zero-width spaces), surrogates, line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def parse_name(value: object, label: str) -> str:
    """Any name the daemon accepts, used as given: only empty and invisible ones are refused.

    The daemon refuses only an empty name. Control characters, and the
    characters that change how text around them is shown (bidirectional
    overrides, zero-width spaces, line separators), are refused because ``ps``,
    ``status`` and logs print the name: they could hide or rewrite what a
    person reads there. Whitespace is kept as given, as the original client did.
    """
    accepted = "a non-empty name without control or invisible characters"
    if not isinstance(value, str) or not value:
        raise _fail(label, value, accepted)
    if not value.isprintable():  # rare: only then is the exact rule worth an import
        import unicodedata

        if any(unicodedata.category(c) in _HIDDEN_CATEGORIES for c in value):
            raise _fail(label, value, accepted)
    return value


def parse_token(value: object, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(label, "<hidden>", "a string")
    token = value.strip()
    if not token:
        return None
    if not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        # Never echo a token, even a broken one.
        raise ConfigError(f"Invalid {label}: expected printable ASCII without spaces")
    return token


def parse_user(value: object, label: str) -> int:
    """A user of this machine, by name or numeric uid: the uid."""
    accepted = "a user name of this machine or a numeric uid"
    if isinstance(value, bool):
        raise _fail(label, value, accepted)
    if isinstance(value, int):
        uid = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        uid = int(value.strip())
    elif isinstance(value, str) and value.strip():
        try:
            import pwd  # only when the setting is used: not every start-up pays for it

            uid = pwd.getpwnam(value.strip()).pw_uid
        except (ImportError, KeyError, ValueError):  # ValueError: an embedded NUL
            raise _fail(label, value, accepted) from None
    else:
        raise _fail(label, value, accepted)
    if not 0 <= uid < 0xFFFFFFFF:
        raise _fail(label, value, accepted)
    return uid


def parse_path(value: object, label: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise _fail(label, value, "a file system path")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise _fail(label, value, "a non-empty file system path")
    return os.path.abspath(os.path.expanduser(text.strip()))


def parse_ca_bundle(value: object, label: str) -> str:
    path = parse_path(value, label)
    if not os.path.isfile(path):
        accepted = "the path of an existing PEM file of CA certificates (CA bundle not found)"
        raise _fail(label, value, accepted)
    return path


def _choice(choices: tuple[str, ...]) -> Callable[[object, str], str]:
    def parse(value: object, label: str) -> str:
        word = value.strip().lower() if isinstance(value, str) else value
        if word not in choices:
            raise _fail(label, value, "one of " + ", ".join(choices))
        return str(word)

    return parse


# option name -> (environment variable, parser)
_OPTIONS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "name": ("DETRIX_NAME", parse_name),
    "control_host": ("DETRIX_CONTROL_HOST", parse_host),
    "control_port": ("DETRIX_CONTROL_PORT", parse_port),
    "advertise_host": ("DETRIX_HOST", parse_host),
    "debug_host": ("DETRIX_DEBUG_HOST", parse_debug_host),
    "debug_port": ("DETRIX_DEBUG_PORT", parse_port),
    "daemon_url": ("DETRIX_DAEMON_URL", parse_url),
    "daemon_user": ("DETRIX_DAEMON_USER", parse_user),
    "token": ("DETRIX_TOKEN", parse_token),
    "detrix_home": ("DETRIX_HOME", parse_path),
    "health_check_timeout": ("DETRIX_HEALTH_CHECK_TIMEOUT", parse_timeout),
    "register_timeout": ("DETRIX_REGISTER_TIMEOUT", parse_timeout),
    "unregister_timeout": ("DETRIX_UNREGISTER_TIMEOUT", parse_timeout),
    "verify_ssl": ("DETRIX_VERIFY_SSL", parse_verify_ssl),
    "ca_bundle": ("DETRIX_CA_BUNDLE", parse_ca_bundle),
    "safe_mode": ("DETRIX_SAFE_MODE", parse_bool),
    "start_state": ("DETRIX_START_STATE", _choice(START_STATES)),
    "require_token": ("DETRIX_REQUIRE_TOKEN", parse_bool),
    "liveness_interval": ("DETRIX_LIVENESS_INTERVAL", parse_timeout),
    "wake_retry_max": ("DETRIX_WAKE_RETRY_MAX", parse_timeout),
    "log_level": ("DETRIX_LOG_LEVEL", _choice(LOG_LEVELS)),
    "discovery": ("DETRIX_DISCOVERY", parse_bool),
    "switch_interval": ("DETRIX_SWITCH_INTERVAL", parse_switch_interval),
}

#: The keyword arguments ``init()`` accepts.
OPTION_NAMES = frozenset(_OPTIONS)
#: Environment variable of each option, for messages and ``doctor``.
ENV_NAMES = {option: env for option, (env, _) in _OPTIONS.items()}


def default_home() -> str:
    return os.path.join(os.path.expanduser("~"), "detrix")


def default_name_base(
    orig_argv: list[str] | None = None, parent_argv: list[str] | None = None
) -> str:
    """A readable base name from what is running: the script or ``-m`` module.

    ``sys.orig_argv`` is used because ``sys.argv`` still says ``-m`` while
    site-packages hooks run. A ``-c`` program started by another Python
    process (multiprocessing's spawn and its helpers, pytest-xdist's workers)
    is named after that parent and its role, ``app-worker``, because
    ``python-c`` tells nobody which application it belongs to. The parent's
    command line is ``parent_argv`` when given, else read from ``/proc`` for
    this very process (never for an ``orig_argv`` passed in).
    """
    import sys

    argv = list(getattr(sys, "orig_argv", sys.argv) if orig_argv is None else orig_argv)
    base = _name_from_argv(argv)
    if base == "python-c":
        if parent_argv is None and orig_argv is None:
            parent_argv = _python_parent_argv()
        parent = _clean_name(_name_from_argv(parent_argv)) if parent_argv else ""
        if parent not in ("", "python", "python-c"):
            base = f"{parent}-{_child_role(_inline_code(argv))}"
    return _clean_name(base)


def _name_from_argv(argv: list[str]) -> str:
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:]
        if arg == "-c" or arg.startswith("-c"):
            return "python-c"
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        base = os.path.basename(arg.rstrip("/")) or "python"
        return base[:-3] if base.endswith(".py") else base
    return "python"


def _clean_name(base: str) -> str:
    cleaned = "".join(c if (c.isalnum() and c.isascii()) or c in "._-" else "_" for c in base)
    return cleaned.strip("._-")[:60] or "python"


def _inline_code(argv: list[str]) -> str:
    """The program text of ``-c CODE`` (or ``-cCODE``), or ""."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "-c":
            return argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("-c"):
            return arg[2:]
    return ""


#: What well-known ``-c`` children do, by a phrase of their program text.
_CHILD_ROLES = (
    ("multiprocessing.spawn", "worker"),  # multiprocessing spawn; uvicorn --workers/--reload
    ("multiprocessing.resource_tracker", "resource-tracker"),
    ("multiprocessing.forkserver", "forkserver"),
    ("sys.stdin.readline", "worker"),  # execnet's bootstrap: pytest-xdist workers
)


def _child_role(code: str) -> str:
    for phrase, role in _CHILD_ROLES:
        if phrase in code:
            return role
    return "child"


def _python_parent_argv() -> list[str] | None:
    """The command line of the parent process when it is a Python interpreter.

    Read from ``/proc/<ppid>`` (Linux): nothing is passed through the
    environment, which belongs to the application. Only for ``-c`` programs,
    so an ordinary start does not pay for it.
    """
    try:
        ppid = os.getppid()
        exe = os.path.basename(os.readlink(f"/proc/{ppid}/exe"))
        with open(f"/proc/{ppid}/cmdline", "rb") as handle:
            raw = handle.read(1 << 16)
    except (OSError, AttributeError):
        return None
    if not exe.startswith(("python", "pypy")):
        return None  # a shell, or a program embedding Python: its argv means something else
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def resolve(
    options: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    defer_daemon_url: bool = False,
) -> Settings:
    """Build :class:`Settings`; the first bad value raises :class:`ConfigError`.

    ``options`` are explicit arguments: a key that is present wins, whatever
    its value, except ``None`` and ``""``, which mean "not given" (``init(name="")``
    asks for the default name, as in the original client). ``environ`` defaults
    to ``os.environ``; empty variables count as unset, and so do blank ones,
    except ``DETRIX_NAME``, whose whitespace is a name as given.

    ``defer_daemon_url`` (the explicit ``init()``): a malformed daemon URL is
    kept as given instead of raising; the ``wake()`` that would use it fails
    with :class:`~detrix_auto.errors.DaemonError` (see :func:`daemon_url_problem`).
    """
    options = dict(options or {})
    env = os.environ if environ is None else environ
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(OPTION_NAMES))}"
        )
    values: dict[str, Any] = {}
    notes: list[str] = []
    for option, (env_name, parse) in _OPTIONS.items():
        given = options.get(option)
        if given is not None and given != "":
            label, raw = option, given
        else:  # absent, None or "": the environment decides
            env_raw = env.get(env_name)
            blank = env_raw is None or env_raw == "" or (option != "name" and not env_raw.strip())
            if blank:
                continue
            label, raw = env_name, env_raw
        if option == "daemon_url" and defer_daemon_url and isinstance(raw, str):
            problem = _url_problem(raw)
            values[option] = raw.strip() if problem else parse(raw, label)
            continue
        values[option] = parse(raw, label)
        if option == "verify_ssl" and isinstance(raw, str):
            word = raw.strip().lower()
            if word not in TRUE_WORDS and word not in FALSE_WORDS:
                notes.append(
                    f"{label}={raw!r} is not a word detrix-auto knows; TLS verification stays "
                    "on (0/false/no/off turn it off)"
                )
    name = values.pop("name", None) or default_name_base()
    if "daemon_user" in values:
        values["daemon_uid"] = values.pop("daemon_user")
    if values.get("verify_ssl") is False and "ca_bundle" in values:
        # The original client verified against the bundle in this case; so do we,
        # and say so rather than refuse a setup that worked there.
        values["verify_ssl"] = True
        notes.append(
            "DETRIX_CA_BUNDLE is set and TLS verification is off (DETRIX_VERIFY_SSL): the CA "
            "bundle wins and the daemon's certificate is verified against it"
        )
    debug_host = values.get("debug_host", "127.0.0.1")
    if debug_host != "127.0.0.1" and not is_loopback(debug_host) and not values.get("token"):
        raise ConfigError(
            f"DETRIX_DEBUG_HOST={debug_host!r} would expose the debugger (code execution) beyond "
            "this machine; it is allowed only together with DETRIX_TOKEN"
        )
    return Settings(name_base=name, notes=tuple(notes), **values)


# -- address helpers, shared with the control plane's authorisation ---------


def is_loopback(host: str) -> bool:
    """True for ``localhost``, any 127/8 address, ``::1`` and IPv4-mapped loopback.

    Parsed, never string-compared: ``127.000.0.1`` is not an address and
    ``::ffff:127.0.0.1`` is loopback.
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in ("localhost", "localhost.", "127.0.0.1", "::1"):
        return True
    import ipaddress  # not at module level: it costs milliseconds at start-up

    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_ipv4_literal(host: str) -> bool:
    """Four dot-separated decimal numbers 0-255: no name, no shorthand (``127.1``), no zone."""
    parts = host.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and p.isascii() and len(p) <= 3 and int(p) <= 255 for p in parts
    )


def control_plane_url(advertise_host: str | None, control_host: str, port: int) -> str | None:
    """The URL by which others (the daemon, tools) can reach this control plane, if known.

    The advertised host when there is one, else the control host unless it is a
    wildcard bind (``0.0.0.0``, ``::``), which names no host anyone can reach.
    """
    host = advertise_host or (control_host if control_host not in ("", "0.0.0.0", "::") else "")
    if not host or not port:
        return None
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def split_host_port(value: str) -> tuple[str, str | None]:
    """Split a ``Host`` header value into host and port text (port may be None).

    After ``[address]`` only ``:port`` may follow; anything else there comes
    back as the port text (``[::1]evil.example`` gives ``evil.example``), so
    a caller that checks the port is numeric refuses it.
    """
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        host, rest = value[1:end], value[end + 1 :]
        if not rest:
            return host, None
        return host, rest[1:] if rest.startswith(":") else rest
    if value.count(":") == 1:
        host, port = value.split(":", 1)
        return host, port
    return value, None


def same_origin(a: str, b: str) -> bool:
    """Scheme, host and port equal: where a bearer token may be sent."""
    from urllib.parse import urlsplit  # at wake time only: start-up does not pay for it

    def origin(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        return parts.scheme, (parts.hostname or "").lower(), parts.port or default

    try:
        return origin(a) == origin(b)
    except ValueError:
        return False
