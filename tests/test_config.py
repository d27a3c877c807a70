"""Settings resolution: precedence, every variable, and a named error for each bad value."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from detrix_auto.config import (
    DEFAULT_DAEMON_URL,
    ENV_NAMES,
    OPTION_NAMES,
    control_plane_url,
    daemon_url_problem,
    default_name_base,
    is_loopback,
    parse_enable,
    resolve,
)
from detrix_auto.errors import ConfigError, DetrixError


def test_defaults_with_empty_environment(tmp_path):
    s = resolve({}, {})
    assert s.control_host == "127.0.0.1"
    assert s.control_port == 0
    assert s.debug_host == "127.0.0.1"
    assert s.debug_port == 0
    assert s.daemon_url is None  # discovered at wake time
    assert s.token is None
    assert s.health_check_timeout == 2.0
    assert s.register_timeout == 5.0
    assert s.unregister_timeout == 2.0
    assert s.verify_ssl is True
    assert s.start_state == "sleeping"
    assert s.detrix_home.endswith("detrix")


@pytest.mark.parametrize(
    ("option", "env_value", "parsed"),
    [
        ("name", "svc", "svc"),
        ("control_host", "0.0.0.0", "0.0.0.0"),
        ("control_port", "9001", 9001),
        ("debug_port", "5679", 5679),
        ("daemon_url", "http://10.0.0.1:9/prefix/", "http://10.0.0.1:9/prefix"),
        ("token", "abc123", "abc123"),
        ("health_check_timeout", "0.5", 0.5),
        ("register_timeout", "7", 7.0),
        ("unregister_timeout", "1.5", 1.5),
        ("verify_ssl", "off", False),
        ("safe_mode", "yes", True),
        ("start_state", "WARM", "warm"),
        ("require_token", "1", True),
        ("log_level", "debug", "debug"),
        ("switch_interval", "0.0005", 0.0005),
    ],
)
def test_every_variable_takes_effect(option, env_value, parsed):
    s = resolve({}, {ENV_NAMES[option]: env_value})
    got = s.name_base if option == "name" else getattr(s, option)
    assert got == parsed


def test_home_and_ca_bundle_from_environment(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    s = resolve({}, {"DETRIX_HOME": str(tmp_path), "DETRIX_CA_BUNDLE": str(bundle)})
    assert s.detrix_home == str(tmp_path)
    assert s.ca_bundle == str(bundle)
    assert s.token_files == (str(tmp_path / "auth-token"), str(tmp_path / "mcp-token"))


def test_explicit_argument_beats_environment_even_when_equal_to_default():
    env = {"DETRIX_CONTROL_PORT": "9001", "DETRIX_DAEMON_URL": "http://10.1.1.1:1"}
    s = resolve({"control_port": 0, "daemon_url": DEFAULT_DAEMON_URL}, env)
    assert s.control_port == 0
    assert s.daemon_url == DEFAULT_DAEMON_URL


def test_environment_beats_default():
    s = resolve({}, {"DETRIX_CONTROL_HOST": "::1", "DETRIX_DAEMON_URL": "https://d:8443"})
    assert s.control_host == "::1"
    assert s.daemon_url == "https://d:8443"


def test_explicit_none_means_not_given():
    assert resolve({"control_port": None}, {"DETRIX_CONTROL_PORT": "9"}).control_port == 9


def test_empty_variable_counts_as_unset():
    assert resolve({}, {"DETRIX_CONTROL_PORT": "  "}).control_port == 0


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("DETRIX_CONTROL_PORT", "abc", "0 to 65535"),
        ("DETRIX_CONTROL_PORT", "70000", "0 to 65535"),
        ("DETRIX_DEBUG_PORT", "-1", "0 to 65535"),
        ("DETRIX_DEBUG_PORT", "٣", "0 to 65535"),  # a non-ASCII digit
        ("DETRIX_REGISTER_TIMEOUT", "-1", "greater than 0"),
        ("DETRIX_REGISTER_TIMEOUT", "0", "greater than 0"),
        ("DETRIX_HEALTH_CHECK_TIMEOUT", "nan", "greater than 0"),
        ("DETRIX_UNREGISTER_TIMEOUT", "inf", "greater than 0"),
        ("DETRIX_UNREGISTER_TIMEOUT", "soon", "greater than 0"),
        ("DETRIX_SAFE_MODE", "2", "1/true/yes/on"),
        ("DETRIX_DAEMON_URL", "127.0.0.1:8090", "http://"),
        ("DETRIX_DAEMON_URL", "http://", "http://"),
        ("DETRIX_DAEMON_URL", "ftp://host", "http://"),
        ("DETRIX_DAEMON_URL", "http://u:p@host", "no credentials"),
        ("DETRIX_DAEMON_USER", "no-such-user-anywhere", "a user name of this machine"),
        ("DETRIX_DAEMON_URL", "http://host:99999", "port"),
        ("DETRIX_CA_BUNDLE", "/no/such/bundle.pem", "existing PEM"),
        ("DETRIX_START_STATE", "running", "sleeping, warm, awake"),
        ("DETRIX_NAME", "tab\there", "without control"),
        ("DETRIX_NAME", "bidi\u202eevil", "without control"),
        ("DETRIX_CONTROL_HOST", "a/b", "IP address"),
        ("DETRIX_LOG_LEVEL", "loud", "off, error"),
    ],
)
def test_bad_value_names_variable_value_and_what_is_accepted(variable, value, accepted):
    with pytest.raises(ConfigError) as info:
        resolve({}, {variable: value})
    message = str(info.value)
    assert variable in message
    # Credentials are never echoed, the rest of the value is.
    shown = value.replace("u:p@", "<credentials>@")
    assert repr(shown) in message
    assert "u:p@" not in message
    assert accepted in message
    assert isinstance(info.value, DetrixError)


def test_bad_argument_names_the_option():
    with pytest.raises(ConfigError, match=r"control_port='x'"):
        resolve({"control_port": "x"}, {})
    with pytest.raises(ConfigError, match="control_port=True"):
        resolve({"control_port": True}, {})


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(ConfigError, match="unknown option.*colour") as info:
        resolve({"colour": "red"}, {})
    assert "daemon_url" in str(info.value)


def test_token_value_is_never_echoed():
    with pytest.raises(ConfigError) as info:
        resolve({}, {"DETRIX_TOKEN": "sec ret"})
    assert "sec ret" not in str(info.value)
    assert "sec" not in repr(resolve({}, {"DETRIX_TOKEN": "secret"}))


def test_wide_debug_bind_requires_a_token():
    with pytest.raises(ConfigError, match="DETRIX_TOKEN"):
        resolve({}, {"DETRIX_DEBUG_HOST": "0.0.0.0"})
    s = resolve({}, {"DETRIX_DEBUG_HOST": "0.0.0.0", "DETRIX_TOKEN": "t"})
    assert s.debug_host == "0.0.0.0"


def test_wide_control_bind_does_not_widen_the_debugger():
    s = resolve({}, {"DETRIX_CONTROL_HOST": "0.0.0.0"})
    assert s.debug_host == "127.0.0.1"


def test_ca_bundle_with_verification_off_verifies_against_the_bundle(tmp_path):
    # The original client verified against the bundle here; refusing would crash
    # a program that worked there. The choice is said, not silent.
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    s = resolve({}, {"DETRIX_CA_BUNDLE": str(bundle), "DETRIX_VERIFY_SSL": "false"})
    assert s.verify_ssl is True and s.ca_bundle == str(bundle)
    assert any("the CA bundle wins" in note for note in s.notes)


def test_settings_are_immutable():
    s = resolve({}, {})
    with pytest.raises(AttributeError):
        s.control_port = 5  # type: ignore[misc]
    assert s.replace(control_port=5).control_port == 5


def test_all_options_have_an_environment_variable():
    assert set(ENV_NAMES) == OPTION_NAMES
    assert all(v.startswith("DETRIX_") for v in ENV_NAMES.values())


@pytest.mark.parametrize(
    ("argv", "base"),
    [
        (["python", "app.py"], "app"),
        (["python", "-u", "/srv/my app/worker.py", "--x"], "worker"),
        (["python", "-m", "http.server", "8000"], "http.server"),
        (["python", "-mgunicorn"], "gunicorn"),
        (["python", "-X", "dev", "-W", "error", "job.py"], "job"),
        (["python", "-c", "print(1)"], "python-c"),
        (["python"], "python"),
        (["python", "ünïcode.py"], "n_code"),
    ],
)
def test_default_name_comes_from_what_runs(argv, base):
    assert default_name_base(argv) == base


def test_connection_name_carries_the_pid():
    s = resolve({"name": "svc"}, {})
    assert s.connection_name(42) == "svc-42"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        (" on ", True),
        ("yes", True),
        ("0", False),
        ("off", False),
        ("", False),
        (None, False),
        ("maybe", None),
        ("2", None),
    ],
)
def test_enable_words(value, expected):
    assert parse_enable(value) is expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("127.000.0.1", False),
        ("localhost.evil.com", False),
        ("0.0.0.0", False),
        ("", False),
    ],
)
def test_loopback_is_parsed_not_string_compared(host, loopback):
    assert is_loopback(host) is loopback


@settings(max_examples=examples(400), deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(ENV_NAMES.values())),
        st.one_of(
            st.text(max_size=30), st.sampled_from(["1", "0", "nan", "-1", "65536", "http://x"])
        ),
        max_size=6,
    )
)
def test_environment_parser_either_resolves_or_raises_config_error(env):
    """Property: no value of any variable makes resolve() fail with anything else."""
    try:
        s = resolve({}, env)
    except ConfigError as exc:
        assert "DETRIX_" in str(exc)
        return
    assert 0 <= s.control_port <= 65535
    for timeout in (s.health_check_timeout, s.register_timeout, s.unregister_timeout):
        assert 0 < timeout <= 3600 and not math.isnan(timeout)
    assert s.switch_interval is None or 0.0001 <= s.switch_interval <= 0.005


# -- what code written for detrix-py 1.2.0 relies on ---------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "test service",
        "test-service_v1.2.3+build.123",
        "test-服务-🔍",
        "a" * 1000,
        "   ",
        " pad ",
        "no\u00a0break",  # a space Python does not call printable, shown as one
        "private\ue000use",
    ],
)
def test_names_are_used_as_given_like_the_daemon_accepts_them(name):
    # The daemon refuses only an empty name; whitespace is kept, as the original did.
    assert resolve({"name": name}, {}).name_base == name
    assert resolve({}, {"DETRIX_NAME": name}).name_base == name


@pytest.mark.parametrize(
    "bad",
    ["line\nbreak", "nul\x00", "esc\x1b[31m", "zero\u200bwidth", "bidi\u202eevil", "sep\u2028"],
)
def test_names_with_control_or_invisible_characters_are_refused(bad):
    # A name is printed by `ps` and in logs: nothing in it may hide or rewrite text.
    with pytest.raises(ConfigError, match="without control or invisible characters"):
        resolve({"name": bad}, {})


def test_an_empty_name_means_the_default_name():
    assert resolve({"name": ""}, {}).name_base == resolve({}, {}).name_base
    assert resolve({"name": ""}, {"DETRIX_NAME": "svc"}).name_base == "svc"


def test_an_explicit_empty_string_means_not_given():
    env = {"DETRIX_CONTROL_HOST": "::1", "DETRIX_DAEMON_URL": "http://d:1"}
    s = resolve({"control_host": "", "daemon_url": ""}, env)
    assert (s.control_host, s.daemon_url) == ("::1", "http://d:1")


@pytest.mark.parametrize("word", ["anything", "maybe", "2"])
def test_an_unknown_verify_ssl_word_keeps_verification_on_and_says_so(word):
    s = resolve({}, {"DETRIX_VERIFY_SSL": word})
    assert s.verify_ssl is True
    assert s.notes and f"DETRIX_VERIFY_SSL={word!r}" in s.notes[0]
    assert resolve({}, {"DETRIX_VERIFY_SSL": " NO "}).verify_ssl is False
    assert resolve({}, {"DETRIX_VERIFY_SSL": "yes"}).notes == ()


def test_advertise_host_comes_from_detrix_host():
    assert resolve({}, {}).advertise_host is None
    assert resolve({}, {"DETRIX_HOST": "order-service"}).advertise_host == "order-service"
    assert (
        resolve({"advertise_host": "[fd00::5]"}, {"DETRIX_HOST": "x"}).advertise_host == "fd00::5"
    )
    with pytest.raises(ConfigError, match="Invalid DETRIX_HOST="):
        resolve({}, {"DETRIX_HOST": "a b"})


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("not-a-valid-url", "Invalid daemon_url format"),
        ("ftp://127.0.0.1:8090", "Invalid daemon_url scheme"),
        ("http://", "Invalid daemon_url format"),
    ],
)
def test_a_malformed_daemon_url_is_kept_by_init_and_named_for_wake(url, phrase):
    # resolve() as init() calls it keeps the URL; the wake that uses it says why it cannot.
    s = resolve({"daemon_url": url}, {}, defer_daemon_url=True)
    assert s.daemon_url == url
    problem = daemon_url_problem(s.daemon_url)
    assert problem is not None and phrase in problem and repr(url) in problem
    # the start-up hook and doctor still refuse it at once
    with pytest.raises(ConfigError, match="Invalid DETRIX_DAEMON_URL="):
        resolve({}, {"DETRIX_DAEMON_URL": url})
    assert daemon_url_problem("http://127.0.0.1:8090/api/") is None


def test_messages_carry_the_original_clients_key_phrases():
    with pytest.raises(ConfigError, match="Invalid DETRIX_CONTROL_PORT"):
        resolve({}, {"DETRIX_CONTROL_PORT": "invalid"})
    with pytest.raises(ConfigError, match="Invalid DETRIX_REGISTER_TIMEOUT"):
        resolve({}, {"DETRIX_REGISTER_TIMEOUT": "-5.0"})
    for value in (-1.0, 0.0):
        with pytest.raises(ConfigError, match="Timeout must be positive"):
            resolve({"health_check_timeout": value}, {})
    with pytest.raises(ConfigError, match="CA bundle not found"):
        resolve({}, {"DETRIX_CA_BUNDLE": "/no/such/ca.pem"})


@pytest.mark.parametrize(
    ("advertise", "control", "port", "url"),
    [
        (None, "127.0.0.1", 8091, "http://127.0.0.1:8091"),
        (None, "0.0.0.0", 8091, None),
        (None, "::", 8091, None),
        ("order-service", "0.0.0.0", 8091, "http://order-service:8091"),
        ("fd00::5", "::", 8091, "http://[fd00::5]:8091"),
        ("app", "0.0.0.0", 0, None),
    ],
)
def test_control_plane_url_names_a_reachable_host_or_nothing(advertise, control, port, url):
    assert control_plane_url(advertise, control, port) == url
