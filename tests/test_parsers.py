"""The document parsers: strict, safe and bounded, with the path and line in every error."""

from __future__ import annotations

import importlib.util
import json
import time
import tracemalloc
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from confhub import SourceFormatError
from confhub._parsers import (
    MAX_DEPTH,
    MAX_NODES,
    YAML_LOADER_ENV,
    parse_document,
    yaml_loader_kind,
)

#: Every YAML case runs through both loaders: libyaml's C parser (the default, when PyYAML
#: has it) and the pure-Python one (``CONFHUB_YAML_LOADER=pure``, and the fallback).
YAML_LOADERS = ["c", "pure"] if hasattr(yaml, "CSafeLoader") else ["pure"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that read YAML (by name, or through a ``fmt`` parameter) run once per loader."""
    if "yaml" in metafunc.function.__name__ or "fmt" in metafunc.fixturenames:
        metafunc.parametrize("yaml_loader", YAML_LOADERS, indirect=True)


@pytest.fixture(autouse=True)
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    kind: str | None = getattr(request, "param", None)
    if kind == "pure":
        monkeypatch.setenv(YAML_LOADER_ENV, "pure")
    elif kind == "c":
        monkeypatch.delenv(YAML_LOADER_ENV, raising=False)
        if yaml_loader_kind() != "c":
            pytest.skip("PyYAML has no usable libyaml (C) loader here")
    if kind is not None:
        assert yaml_loader_kind() == kind
    return kind

PATH = "/etc/app/config.x"
#: Generous bounds: a refused bomb must cost neither minutes nor gigabytes. The memory bound
#: shows it was not expanded (9**10 values); the time is a hang guard, not a pace.
BOMB_SECONDS = 60.0
BOMB_BYTES = 50 * 1024 * 1024


def parse(text: str | bytes, fmt: str) -> Any:
    return parse_document(text, fmt, source="file:config", path=PATH)


def refused(text: str | bytes, fmt: str) -> SourceFormatError:
    with pytest.raises(SourceFormatError) as info:
        parse(text, fmt)
    error = info.value
    assert error.source == "file:config"
    assert PATH in str(error)
    return error


@pytest.mark.parametrize(
    ("fmt", "text", "line"),
    [
        ("toml", 'a = 1\nb = "x"\nc = \n', 3),
        ("json", '{\n  "a": 1,\n  "b": ,\n}', 3),
        ("yaml", "a: 1\nb: [1, 2\nc: 3\n", 3),
    ],
)
def test_syntax_error_names_path_and_line(fmt: str, text: str, line: int) -> None:
    """A syntax error names the file's path and the line, in the message and in ``.line``."""
    error = refused(text, fmt)
    assert error.line == line
    assert f"line {line}" in str(error)


@pytest.mark.parametrize(
    ("fmt", "text", "line"),
    [
        ("toml", "a = 1\nb = 2\na = 3\n", 3),
        ("json", '{\n  "a": 1,\n  "a": 2\n}', 3),
        ("yaml", "a: 1\nb: 2\na: 3\n", 3),
    ],
)
def test_duplicate_key_is_refused(fmt: str, text: str, line: int) -> None:
    """A key given twice in one table is refused, naming the line of the second one."""
    error = refused(text, fmt)
    assert error.line == line
    assert "a" in str(error)


def test_yaml_merge_key_override_is_not_a_duplicate() -> None:
    """Overriding a key brought in by a YAML merge (``<<: *base``) is allowed."""
    text = "base: &b {host: a, port: 1}\nprod:\n  <<: *b\n  port: 2\n"
    assert parse(text, "yaml")["prod"] == {"host": "a", "port": 2}


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/object:collections.OrderedDict {}\n",
        "a: !!python/name:os.system\n",
    ],
)
def test_yaml_python_tags_are_refused(text: str) -> None:
    """YAML Python tags are refused (safe loading only), naming the line."""
    error = refused(text, "yaml")
    assert error.line == 1


@pytest.mark.parametrize("text", ["true: 1\n", "~: 1\n", "? [a, b]\n: 1\n", "1.5: x\n"])
def test_yaml_non_string_key_is_refused(text: str) -> None:
    """YAML keys that are booleans, null, floats or collections are refused."""
    assert "not a string" in str(refused(text, "yaml"))


def test_yaml_plain_scalars_are_typed_only_where_yaml_1_1_and_1_2_agree() -> None:
    """``no`` is not False, ``on:`` is a key, dates stay text: values have the same types
    as from any other source (the cache stores JSON; env and KV stores deliver text)."""
    text = (
        "country: no\non: push\nyes: 1\nflag: Off\nday: 2001-12-14\nbig: 1_000\n"
        "octal: 0o12\nbinary: 0b101\nsexagesimal: 1:20\nexp: 1e3\n"
        "t: true\nT: TRUE\nnothing: ~\nempty:\nhex: 0x1F\nneg: -7\nzero: 0\n"
        "f: 1.5\nf2: .5\nf3: 1.5e+3\nv: 1.10\nquoted: '012'\n"
    )
    assert parse(text, "yaml") == {
        "country": "no", "on": "push", "yes": 1, "flag": "Off", "day": "2001-12-14",
        "big": "1_000", "octal": "0o12", "binary": "0b101", "sexagesimal": "1:20",
        "exp": "1e3", "t": True, "T": True, "nothing": None, "empty": None, "hex": 31,
        "neg": -7, "zero": 0, "f": 1.5, "f2": 0.5, "f3": 1500.0, "v": 1.1, "quoted": "012",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mode: 0644\n", "0644 is ambiguous"),
        ("mode: -012\n", "-012 is ambiguous"),
        ("a: !!binary aGVsbG8=\n", "!!binary value cannot be a configuration value"),
        ("a: !!set {x}\n", "!!set value cannot be a configuration value"),
        ("a: !!timestamp 2001-12-14\n", "!!timestamp value cannot be a configuration value"),
        ("a: !!omap [{a: 1}]\n", "!!omap value cannot be a configuration value"),
        ("a: !!bool yes\n", "'yes' is not a boolean"),
    ],
)
def test_yaml_ambiguous_and_non_json_values_are_refused(text: str, message: str) -> None:
    error = refused(text, "yaml")
    assert message in str(error)
    assert error.line == 1


def test_yaml_explicit_tags_take_yaml_1_2_spellings() -> None:
    text = "a: !!int 0o12\nb: !!float 1e3\nc: !!bool false\nd: !!str 012\n"
    assert parse(text, "yaml") == {"a": 10, "b": 1000.0, "c": False, "d": "012"}


def test_yaml_safe_dump_round_trips_strings_that_yaml_1_2_would_type() -> None:
    """PyYAML writes YAML 1.1: it leaves ``1e3`` or ``0o12`` unquoted, which a YAML 1.2
    reader would make numbers; they come back as the strings they were."""
    yaml = pytest.importorskip("yaml")
    data = {"a": "1e3", "b": "0o12", "c": "1.5e3", "d": "no", "e": "2001-12-14", "f": "0644"}
    assert parse(yaml.safe_dump(data), "yaml") == data


def test_toml_dates_and_times_become_iso_8601_text() -> None:
    """As from every other source (and from the cache, which stores JSON)."""
    text = "a = 1979-05-27T07:32:00Z\nb = 1979-05-27\nc = 07:32:00\n"
    text += "[t]\nd = [1979-05-27T07:32:00]\n"
    assert parse(text, "toml") == {
        "a": "1979-05-27T07:32:00+00:00", "b": "1979-05-27", "c": "07:32:00",
        "t": {"d": ["1979-05-27T07:32:00"]},
    }  # fmt: skip


def test_yaml_integer_key_becomes_a_string() -> None:
    """A YAML integer key (``404: not found``) is kept as the string ``"404"``."""
    assert parse("codes:\n  404: missing\n", "yaml") == {"codes": {"404": "missing"}}


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("toml", "a = nan\n"),
        ("toml", "a = [1.0, -inf]\n"),
        ("json", '{"a": NaN}'),
        ("json", '{"a": -Infinity}'),
        ("json", '{"a": 1e999}'),
        ("yaml", "a: .nan\n"),
        ("yaml", "a: {b: .inf}\n"),
    ],
)
def test_non_finite_numbers_are_refused(fmt: str, text: str) -> None:
    """NaN and infinities are refused in every format."""
    assert "not allowed" in str(refused(text, fmt))


def _nested(fmt: str, depth: int) -> str:
    if fmt == "json":
        return '{"a": ' + "[" * depth + "]" * depth + "}"
    if fmt == "toml":
        return "a = " + "[" * depth + "]" * depth + "\n"
    return "a: " + "[" * depth + "]" * depth + "\n"


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused(fmt: str, depth: int) -> None:
    """Nesting past MAX_DEPTH is refused, even far past Python's recursion limit."""
    assert "nesting deeper" in str(refused(_nested(fmt, depth), fmt))


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
def test_nesting_at_the_limit_is_accepted(fmt: str) -> None:
    """A document nested exactly MAX_DEPTH levels deep parses."""
    assert "a" in parse(_nested(fmt, MAX_DEPTH - 1), fmt)


def _billion_laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_quickly_in_bounded_memory() -> None:
    """A "billion laughs" alias bomb is refused before expansion, fast and in little memory."""
    text = _billion_laughs(10)  # 9**10 values once expanded
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = refused(text, "yaml")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "alias bomb" in str(error)
    assert elapsed < BOMB_SECONDS
    assert peak < BOMB_BYTES


def test_yaml_aliases_within_the_bound_are_accepted() -> None:
    """Aliases that expand to fewer than MAX_NODES values are ordinary YAML."""
    data = parse(_billion_laughs(3), "yaml")
    assert len(data["a2"]) == 9
    assert MAX_NODES > 9**3


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("json", "[1, 2]"),
        ("json", '"text"'),
        ("json", "null"),
        ("json", "3"),
        ("yaml", "- 1\n- 2\n"),
        ("yaml", "just text\n"),
    ],
)
def test_non_mapping_document_is_refused(fmt: str, text: str) -> None:
    """A document whose top level is not a mapping is refused (TOML's always is one)."""
    assert "must be a mapping" in str(refused(text, fmt))


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_empty_document_is_an_empty_mapping(fmt: str) -> None:
    """An empty or comments-only TOML/YAML file contributes nothing."""
    assert parse("# nothing here\n", fmt) == {}


def test_yaml_multiple_documents_are_refused() -> None:
    """A YAML stream of several documents is refused (which one would win?)."""
    assert refused("a: 1\n---\na: 2\n", "yaml").line == 2


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
def test_invalid_utf8_names_the_byte_offset(fmt: str) -> None:
    """Bytes that are not UTF-8 are refused with their byte offset and line."""
    content = b'a = "ok"\nb = "\xff"\n' if fmt == "toml" else b'{"a":\n "\xff"}'
    offset = content.index(b"\xff")
    error = refused(content, fmt)
    assert f"byte {offset}" in str(error)
    assert error.line == 2


def test_utf8_bom_is_accepted() -> None:
    """A UTF-8 byte-order mark is skipped."""
    assert parse(b'\xef\xbb\xbf{"a": 1}', "json") == {"a": 1}


# -- round trips ---------------------------------------------------------------------------

# PyYAML's *emitter* folds the Unicode line breaks NEL, LS and PS in plain scalars into
# spaces, so a dump would not round-trip; the parser is not at fault. They are left out.
_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x85\u2028\u2029"),
    max_size=20,
)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_documents = st.dictionaries(
    _text,
    st.recursive(
        _leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
        max_leaves=20,
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(_documents)
def test_json_round_trip(document: dict[str, Any]) -> None:
    """Any JSON-able nested dict with string keys survives dumping and parsing as JSON."""
    assert parse(json.dumps(document), "json") == document


@settings(max_examples=150, deadline=None)
@given(_documents)
@example({"": "08"})  # PyYAML writes "? ''\n: 08\n"
def test_yaml_round_trip(document: dict[str, Any]) -> None:
    """Any JSON-able nested dict with string keys survives dumping and parsing as YAML, or is
    refused because PyYAML wrote a string plain that YAML 1.1 and 1.2 read differently (it
    writes ``'08'`` as ``08`` after a complex key: YAML 1.1 has no such int, 1.2 reads 8);
    confhub refuses such a scalar rather than guess."""
    text = yaml.safe_dump(document, allow_unicode=True)
    refusal: SourceFormatError | None = None
    try:
        parsed = parse(text, "yaml")
    except SourceFormatError as exc:
        refusal = exc
    if refusal is not None:
        assert "is ambiguous" in str(refusal), (text, refusal)
    else:
        assert parsed == document


_toml_leaves = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_toml_documents = st.dictionaries(
    st.text(max_size=10),
    st.recursive(
        _toml_leaves,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    ),
    max_size=6,
)


@pytest.mark.skipif(importlib.util.find_spec("tomli_w") is None, reason="tomli_w not installed")
@settings(max_examples=150, deadline=None)
@given(_toml_documents)
def test_toml_round_trip(document: dict[str, Any]) -> None:
    """Any TOML-safe nested dict survives tomli_w and parse_document."""
    import tomli_w

    assert parse(tomli_w.dumps(document), "toml") == document


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ('{"url": "http://x:80",\n "a": 1,\n "a": 2}', 3, "a"),
        ('{"a:b": 1,\n "c": {"t": "12:30", "t": "x"}}', None, "t"),  # both on one line
        ('{"a": 1,\n "\\u0061": 2}', None, "a"),
        ('{"s": "\\":", "k": [{"z": 1}, {"z": 1,\n "z": 2}]}', 2, "z"),
    ],
)
def test_json_duplicate_keys_are_found_whatever_the_strings_hold(
    text: str, line: int | None, key: str
) -> None:
    """Colons inside strings, escapes that spell the same key, nested objects: a key given
    twice is refused, naming it (and its line when the text spells it)."""
    error = refused(text, "json")
    assert error.key == key
    assert error.line == line


@pytest.mark.parametrize(
    "text",
    [
        '{"url": "http://x:80", "t": "12:30", "a": {"b:c": "d:e"}}',
        '{"q": "say \\"a:b\\"", "list": ["x:y", {"k": "v"}]}',
        '{"a": {}, "b": [], "c": {"d": {}}}',
    ],
)
def test_json_colons_in_strings_are_no_duplicates(text: str) -> None:
    assert parse(text, "json") == json.loads(text)


def test_json_errors_keep_their_order() -> None:
    """The first error in the parser's order is the one reported: a duplicate is seen when
    its object closes, so a NaN inside the same object comes first."""
    assert "NaN is not allowed" in str(refused('{"a": 1,\n "a": 2,\n "b": NaN}', "json"))
    error = refused('{"o": {"a": 1,\n "a": 2},\n "b": NaN}', "json")
    assert "duplicate key 'a'" in str(error)
    assert error.line == 2
