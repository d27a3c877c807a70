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


_DEFAULTS: dict[str, Any] = {
    "control_host": "127.0.0.1",
    "control_port": 0,
    "debug_host": "127.0.0.1",
    "debug_port": 0,
    "daemon_url": None,
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


def parse_timeout(value: object, label: str) -> float:
    accepted = f"a number of seconds greater than 0 and at most {MAX_TIMEOUT:g}"
    if isinstance(value, bool):
        raise _fail(label, value, accepted)
    try:
        seconds = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _fail(label, value, accepted) from None
    # NaN fails both comparisons, infinity fails the upper bound.
    if not 0 < seconds <= MAX_TIMEOUT:
        raise _fail(label, value, accepted)
    return seconds


def parse_url(value: object, label: str) -> str:
    """An http(s) base URL; checked by hand because ``urllib.parse`` is costly to import."""
    accepted = "an http:// or https:// URL with a host, e.g. http://127.0.0.1:8090"
    if not isinstance(value, str):
        raise _fail(label, value, accepted)
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise _fail(label, value, accepted)
    authority = rest.split("/", 1)[0]
    if any(c in text for c in "?#") or "@" in authority:
        raise _fail(label, value, accepted + " (no credentials, query or fragment)")
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise _fail(label, value, accepted)
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise _fail(label, value, accepted)
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
    if not host:
        raise _fail(label, value, accepted)
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise _fail(label, value, accepted + " and a port from 1 to 65535")
    return text.rstrip("/")


def parse_host(value: object, label: str) -> str:
    accepted = "an IP address or host name such as 127.0.0.1, ::1 or 0.0.0.0"
    if not isinstance(value, str):
        raise _fail(label, value, accepted)
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise _fail(label, value, accepted)
    return host


def parse_name(value: object, label: str) -> str:
    accepted = "a non-empty name of letters, digits and . _ - (at most 100 characters)"
    if not isinstance(value, str):
        raise _fail(label, value, accepted)
    name = value.strip()
    if not name or len(name) > 100 or not all(c.isalnum() or c in "._-" for c in name):
        raise _fail(label, value, accepted)
    return name


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
        raise ConfigError(f"{label} is not valid: expected printable ASCII without spaces")
    return token


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
        raise _fail(label, value, "the path of an existing PEM file of CA certificates")
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
    "debug_host": ("DETRIX_DEBUG_HOST", parse_host),
    "debug_port": ("DETRIX_DEBUG_PORT", parse_port),
    "daemon_url": ("DETRIX_DAEMON_URL", parse_url),
    "token": ("DETRIX_TOKEN", parse_token),
    "detrix_home": ("DETRIX_HOME", parse_path),
    "health_check_timeout": ("DETRIX_HEALTH_CHECK_TIMEOUT", parse_timeout),
    "register_timeout": ("DETRIX_REGISTER_TIMEOUT", parse_timeout),
    "unregister_timeout": ("DETRIX_UNREGISTER_TIMEOUT", parse_timeout),
    "verify_ssl": ("DETRIX_VERIFY_SSL", parse_bool),
    "ca_bundle": ("DETRIX_CA_BUNDLE", parse_ca_bundle),
    "safe_mode": ("DETRIX_SAFE_MODE", parse_bool),
    "start_state": ("DETRIX_START_STATE", _choice(START_STATES)),
    "require_token": ("DETRIX_REQUIRE_TOKEN", parse_bool),
    "liveness_interval": ("DETRIX_LIVENESS_INTERVAL", parse_timeout),
    "wake_retry_max": ("DETRIX_WAKE_RETRY_MAX", parse_timeout),
    "log_level": ("DETRIX_LOG_LEVEL", _choice(LOG_LEVELS)),
    "discovery": ("DETRIX_DISCOVERY", parse_bool),
}

#: The keyword arguments ``init()`` accepts.
OPTION_NAMES = frozenset(_OPTIONS)
#: Environment variable of each option, for messages and ``doctor``.
ENV_NAMES = {option: env for option, (env, _) in _OPTIONS.items()}


def default_home() -> str:
    return os.path.join(os.path.expanduser("~"), "detrix")


def default_name_base(orig_argv: list[str] | None = None) -> str:
    """A readable base name from what is running: the script or ``-m`` module.

    ``sys.orig_argv`` is used because ``sys.argv`` still says ``-m`` while
    site-packages hooks run.
    """
    import sys

    argv = list(orig_argv if orig_argv is not None else getattr(sys, "orig_argv", sys.argv))
    base = "python"
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            base = argv[i + 1]
            break
        if arg.startswith("-m") and len(arg) > 2:
            base = arg[2:]
            break
        if arg == "-c" or arg.startswith("-c"):
            base = "python-c"
            break
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        base = os.path.basename(arg.rstrip("/")) or "python"
        if base.endswith(".py"):
            base = base[:-3]
        break
    cleaned = "".join(c if (c.isalnum() and c.isascii()) or c in "._-" else "_" for c in base)
    return cleaned.strip("._-")[:60] or "python"


def resolve(
    options: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings`; the first bad value raises :class:`ConfigError`.

    ``options`` are explicit arguments: a key that is present wins, whatever
    its value, except ``None``, which is Python's "not given". ``environ``
    defaults to ``os.environ``; empty variables count as unset.
    """
    options = dict(options or {})
    env = os.environ if environ is None else environ
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(OPTION_NAMES))}"
        )
    values: dict[str, Any] = {}
    for option, (env_name, parse) in _OPTIONS.items():
        if options.get(option) is not None:
            values[option] = parse(options[option], option)
        else:  # absent, or None (Python's "not given"): the environment decides
            raw = env.get(env_name)
            if raw is not None and raw.strip() != "":
                values[option] = parse(raw, env_name)
    name = values.pop("name", None) or default_name_base()
    if values.get("verify_ssl") is False and "ca_bundle" in values:
        raise ConfigError(
            "DETRIX_CA_BUNDLE is set but TLS verification is off (DETRIX_VERIFY_SSL=false): "
            "drop one of them"
        )
    debug_host = values.get("debug_host", "127.0.0.1")
    if debug_host != "127.0.0.1" and not is_loopback(debug_host) and not values.get("token"):
        raise ConfigError(
            f"DETRIX_DEBUG_HOST={debug_host!r} would expose the debugger (code execution) beyond "
            "this machine; it is allowed only together with DETRIX_TOKEN"
        )
    return Settings(name_base=name, **values)


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


def split_host_port(value: str) -> tuple[str, str | None]:
    """Split a ``Host`` header value into host and port text (port may be None)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        host, rest = value[1:end], value[end + 1 :]
        return host, rest[1:] if rest.startswith(":") else None
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
