"""Source specs: parsing, options and credential redaction."""

from __future__ import annotations

import pytest

from confhub import Fallback, SourceSpec, SpecError


def test_bare_path_is_a_file() -> None:
    """A string without a scheme is a file path."""
    spec = SourceSpec.parse("conf/app.toml")
    assert (spec.scheme, spec.location) == ("file", "conf/app.toml")


def test_query_options_and_keyword_overrides() -> None:
    """Options come from the query string; keyword arguments override them."""
    spec = SourceSpec.parse("etcd://h:2379/app/?format=json&timeout=2", timeout=5)
    assert spec.location == "//h:2379/app/"
    assert spec.options == {"format": "json", "timeout": 5}
    assert spec.option_float("timeout", 1) == 5.0


def test_credentials_never_in_display_or_repr() -> None:
    """Passwords in the URL and token options are redacted."""
    spec = SourceSpec.parse("etcd://root:pa55word@h:2379/app/?token=t0ps3cret&format=json")
    for text in (spec.display, repr(spec), str(spec.redacted_options())):
        assert "pa55word" not in text
        assert "t0ps3cret" not in text
    assert "root" in spec.display


def test_bad_boolean_option_names_the_option() -> None:
    """A non-boolean value for a boolean option is a SpecError naming it."""
    with pytest.raises(SpecError, match="optional"):
        _ = SourceSpec.parse("file:x.toml?optional=perhaps").optional


def test_empty_spec_is_an_error() -> None:
    """An empty spec is rejected with an example of a good one."""
    with pytest.raises(SpecError, match=r"file:config\.toml"):
        SourceSpec.parse("  ")


def test_fallback_group_members() -> None:
    """A Fallback groups specs into one slot."""
    group = Fallback("memory:a", "memory:b")
    assert [m.location for m in group.members] == ["a", "b"]
    with pytest.raises(SpecError):
        Fallback()


def test_password_with_a_raw_slash_is_still_redacted() -> None:
    """A '/' in an unencoded password ends the URL's netloc early; it is redacted anyway."""
    spec = SourceSpec.parse("etcd://root:pa/ss@h:2379/app/?token=t0ps3cret")
    assert "pa/ss" not in spec.display
    assert "ss@" not in spec.display
    from confhub._redact import redact_url

    assert "t0ps3cret" not in redact_url("etcd://root:pa/ss@h:2379/app/?token=t0ps3cret")


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "many", "true"])
def test_max_keys_must_be_a_whole_number_above_zero(value: str) -> None:
    """``SourceSpec.max_keys`` is what the hub enforces and what backends read to stop early."""
    assert SourceSpec.parse("memory:app").max_keys == 1_000_000
    assert SourceSpec.parse("memory:app?max_keys=5").max_keys == 5
    with pytest.raises(SpecError, match=r"max_keys=.* is not a whole number above 0"):
        _ = SourceSpec.parse(f"memory:app?max_keys={value}").max_keys


@pytest.mark.parametrize("password", ["pa?ss", "Hash#Pw", "p@ss", "a/b?c#d@e"])
def test_url_password_with_special_characters_is_one_password_never_shown(password: str) -> None:
    """'?', '#', '/' and '@' in a URL password: the query still parses, the parts are exact,
    and neither the display nor the repr holds the password."""
    spec = SourceSpec.parse(f"etcd://app:{password}@h1:2379,h2:2379/appA/?timeout=1&format=json")
    assert dict(spec.options) == {"timeout": "1", "format": "json"}
    parts = spec.url_parts
    assert parts is not None
    assert (parts.user, parts.password, parts.hosts, parts.path) == (
        "app",
        password,
        ("h1:2379", "h2:2379"),
        "/appA/",
    )
    assert spec.display == "etcd://app:<redacted>@h1:2379,h2:2379/appA/"
    assert password not in repr(spec) + repr(parts)


def test_user_info_of_a_spec_missing_its_slashes_is_never_shown() -> None:
    """'etcd:u:pw@h:2379/app/' (no '//') is refused by the backend by its display, which
    hides the password like a well-formed spec's."""
    assert SourceSpec.parse("etcd:u:pw#1@h:2379/app/").display == "etcd:u:<redacted>@h:2379/app/"
