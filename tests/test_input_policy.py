"""Input policies for text that cannot be published as it is (reliability.md §7.2 #39, §6.2).

- An environment variable whose name or value holds bytes that are not UTF-8 (``os.environ``
  keeps them as lone surrogates, PEP 383) is refused with a SourceFormatError naming it.
- An integer literal above 4,300 decimal digits (Python's own limit for decimal literals) is
  refused by ``parse_document`` whatever its base: YAML and TOML hex/octal/binary literals
  are not limited by Python and could not be turned back into text later.
"""

from __future__ import annotations

import os

import pytest

from confhub import Hub, SourceFormatError, parse_document
from confhub._backends.env import EnvBackend
from confhub._parsers import MAX_INT_DIGITS
from confhub._spec import SourceSpec

BAD_VALUE = b"caf\xe9".decode("utf-8", "surrogateescape")  # Latin-1 bytes in the environment


def _env(environ: dict[str, str]) -> EnvBackend:
    return EnvBackend(SourceSpec.parse("env:APP_"), environ)


def test_env_value_with_invalid_utf8_is_refused_naming_the_variable() -> None:
    with pytest.raises(SourceFormatError, match=r"\$APP_NAME is not valid UTF-8") as info:
        _env({"APP_NAME": BAD_VALUE, "APP_OK": "fine"}).load()
    assert info.value.key == "name"
    assert "\ufffd" not in str(info.value)
    str(info.value).encode("utf-8")  # the message itself is printable UTF-8


def test_env_name_with_invalid_utf8_is_refused() -> None:
    name = "APP_" + b"K\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(SourceFormatError, match=r"APP_K\\xff") as info:
        _env({name: "v"}).load()
    str(info.value).encode("utf-8")


def test_env_invalid_utf8_outside_the_prefix_is_ignored() -> None:
    layer = _env({"OTHER": BAD_VALUE, "APP_A": "caf\u00e9"}).load()
    assert dict(layer.values) == {"a": "caf\u00e9"}


def test_env_invalid_utf8_through_os_environ_fails_start(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "environb"):  # pragma: no cover - POSIX only
        pytest.skip("os.environb is POSIX-only")
    monkeypatch.setitem(os.environb, b"CONFHUB_T39_VALUE", b"caf\xe9")
    hub = Hub(["env:CONFHUB_T39_"], cache_dir=None)
    try:
        with pytest.raises(SourceFormatError, match=r"CONFHUB_T39_VALUE is not valid UTF-8"):
            hub.start()
    finally:
        hub.close()


@pytest.mark.parametrize(
    ("fmt", "template"),
    [
        ("yaml", "a: 0x{}\n"),
        ("yaml", "a: [1, 0x{}]\n"),
        ("yaml", "a:\n  b: !!int 0o{}\n"),  # plain 0o.../0b... are text (YAML 1.1/1.2 differ)
        ("toml", "a = 0x{}\n"),
        ("toml", "[t]\na = [0o{}]\n"),
    ],
)
def test_huge_non_decimal_integers_are_refused(fmt: str, template: str) -> None:
    digits = "1" * 15000  # 15,000 hex/octal/binary digits: above 4,300 decimal digits
    with pytest.raises(SourceFormatError, match=f"more than {MAX_INT_DIGITS:,} decimal digits"):
        parse_document(template.format(digits), fmt, source="t")


def test_integers_up_to_the_limit_are_kept() -> None:
    limit = 10**MAX_INT_DIGITS - 1  # 4,300 nines: the largest accepted
    data = parse_document(f"a: {hex(limit)}\nb: !!int -{hex(limit)}\n", "yaml", source="t")
    assert data["a"] == limit
    assert data["b"] == -limit
    assert len(str(data["a"])) == MAX_INT_DIGITS
    with pytest.raises(SourceFormatError):
        parse_document(f"a: {hex(limit + 1)}\n", "yaml", source="t")


def test_huge_decimal_integers_are_refused_as_before() -> None:
    for fmt, text in (("json", '{"a": 1%s}'), ("yaml", "a: 1%s"), ("toml", "a = 1%s")):
        with pytest.raises(SourceFormatError):
            parse_document(text % ("0" * 5000), fmt, source="t")
