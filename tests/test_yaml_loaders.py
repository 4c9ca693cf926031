"""YAML through libyaml's C parser and through the pure-Python one: the same values, the
same errors (message, line, key), the same bounds. The C parser is the default when PyYAML
has it; ``CONFHUB_YAML_LOADER=pure`` selects the pure one (also the fallback without it)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import confhub
from confhub import SourceFormatError
from confhub._parsers import YAML_LOADER_ENV, parse_document, yaml_loader_kind

HAS_C = yaml_loader_kind() == "c" if hasattr(yaml, "CSafeLoader") else False
needs_c = pytest.mark.skipif(not HAS_C, reason="PyYAML has no usable libyaml (C) loader")


def outcome(content: str | bytes, kind: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What parse_document makes of ``content`` with one loader: the value, or the error."""
    if kind == "pure":
        monkeypatch.setenv(YAML_LOADER_ENV, "pure")
    else:
        monkeypatch.delenv(YAML_LOADER_ENV, raising=False)
    assert yaml_loader_kind() == kind
    try:
        return ("value", parse_document(content, "yaml", source="s", path="/p.yaml"))
    except SourceFormatError as exc:
        return ("error", str(exc), exc.line, exc.key)
    finally:
        monkeypatch.delenv(YAML_LOADER_ENV, raising=False)


CASES = [
    # values and typing rules (YAML 1.1 / 1.2 agreement)
    "a: 1\nb: two\nc: [1, 2.5, true, null]\nd: {e: f}\n",
    "country: no\non: push\nyes: 1\nflag: Off\nday: 2001-12-14\nbig: 1_000\n"
    "octal: 0o12\nbinary: 0b101\nsexagesimal: 1:20\nexp: 1e3\n"
    "t: true\nT: TRUE\nnothing: ~\nempty:\nhex: 0x1F\nneg: -7\nzero: 0\n"
    "f: 1.5\nf2: .5\nf3: 1.5e+3\nv: 1.10\nquoted: '012'\n",
    "a: !!int 0o12\nb: !!float 1e3\nc: !!bool false\nd: !!str 012\n",
    "codes:\n  404: missing\n  '405': quoted\n",
    "codes:\n  404: a\n  '404': b\n",  # int and str keys with the same text: the last wins
    "base: &b {host: a, port: 1}\nprod:\n  <<: *b\n  port: 2\n",
    "base: &b {host: a}\nover: &o {port: 3}\nprod:\n  <<: [*b, *o]\n  host: c\n",
    "a: |\n  line one\n  line two\nb: >\n  folded\n  text\n",
    "a: 'single'\nb: \"double \\u00e9\"\nc: plain text # comment\n",
    "# only a comment\n",
    "",
    "---\na: 1\n...\n",
    "a: .inf\n",
    "a: -.Inf\n",
    "a: .nan\n",
    "a: {b: .inf}\n",
    "a: " + "9" * 5000 + "\n",
    "a: 1\x85b: 2\n",
    "a: \ufeffx\n",
    "\ufeffa: 1\n",
    'a: "\\ud83d"\n',
    'a: "\\U0000d800"\n',
    # refusals by confhub's own rules
    "a: 1\nb: 2\na: 3\n",
    "mode: 0644\n",
    "mode: -012\n",
    "a: !!binary aGVsbG8=\n",
    "a: !!set {x}\n",
    "a: !!timestamp 2001-12-14\n",
    "a: !!omap [{a: 1}]\n",
    "a: !!pairs [{a: 1}]\n",
    "a: !!bool yes\n",
    "a: !!int zz\n",
    "!!int\n",
    "a: !!python/object/apply:os.system ['true']\n",
    "a: !!python/name:os.system\n",
    "true: 1\n",
    "~: 1\n",
    "? [a, b]\n: 1\n",
    "1.5: x\n",
    "- 1\n- 2\n",
    "just text\n",
    "a: 1\n---\na: 2\n",
    "a: &x [*x]\n",
    "a: *nowhere\n",
    # syntax errors (libyaml words some differently: the pure loader's words are kept)
    "a: 1\nb: [1, 2\nc: 3\n",
    "a: 1\n b: 2\n",
    "a: [1, 2]]\n",
    "a:\n\t- 1\n",
    "a: 'unterminated\n",
    "a: 1\x00",
    "\x7f{",
    "a: @x\n",
    "a: `x\n",
    "{a: 1, b}\n",
    "a: !<tag:yaml.org,2002:str> x\n",
    "%YAML 1.1\n---\na: 1\n",
    "%YAML 2.0\n---\na: 1\n",
    # nesting
    "a: " + "[" * 63 + "]" * 63 + "\n",
    "a: " + "[" * 65 + "]" * 65 + "\n",
    "a: " + "[" * 2000 + "]" * 2000 + "\n",
    "".join(" " * i + "a:\n" for i in range(70)),
    "".join(" " * i + "a:\n" for i in range(1200)),
    # aliases within and over the bounds
    'a0: &a0 ["lol","lol","lol"]\na1: &a1 [*a0,*a0,*a0]\na2: [*a1,*a1]\n',
    'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]\n'
    + "\n".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)),
]


@needs_c
@pytest.mark.parametrize("text", CASES)
def test_c_and_pure_loaders_agree(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c, pure = outcome(text, "c", monkeypatch), outcome(text, "pure", monkeypatch)
    assert c == pure


@needs_c
@pytest.mark.parametrize("text", CASES[:4])
def test_c_and_pure_loaders_agree_on_bytes(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    content = text.encode()
    assert outcome(content, "c", monkeypatch) == outcome(content, "pure", monkeypatch)


FRAGMENTS = [
    "a", "b", "1", "0", "-", " ", "  ", "\n", ":", ": ", "- ", "[", "]", "{", "}", ",", '"',
    "'", "&x ", "*x", "<<: ", "? ", "!!int ", "!!str ", "!!float ", "!!bool ", "|", ">",
    "#", ".inf", ".nan", "0x1f", "0o7", "012", "1.5", "1e3", "true", "no", "~", "null",
    "\t", "---", "...", "\\u00e9", "é", "\x85", "%YAML 1.1\n",
]  # fmt: skip


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_c_and_pure_loaders_agree_on_fragments(text: str) -> None:
    """Random YAML-ish text: the same value or the same error from both loaders."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        c, pure = outcome(text, "c", monkeypatch), outcome(text, "pure", monkeypatch)
    if c[0] == "value" and pure[0] == "error" and any(m in pure[1] for m in PURE_ONLY):
        return  # valid YAML that only PyYAML's pure scanner refuses (see below)
    assert c == pure


#: What PyYAML's pure-Python scanner refuses and libyaml (like YAML 1.2 and most parsers)
#: reads: a tab as separation space (after a value, in a flow list, before a comment,
#: inside a plain scalar), a comment right after a block scalar indicator (``|#``) and a
#: ``?`` inside a plain scalar in a flow collection (``[a?b]``).
PURE_ONLY = (
    "found character '\\t' that cannot start any token",
    "expected chomping or",
    "but got '?'",
)


@needs_c
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a: 1\t\n", {"a": 1}),
        ("a:\t1\n", {"a": 1}),
        ("a: 1\t# comment\n", {"a": 1}),
        ("a: x\ty\n", {"a": "x\ty"}),
        ("a: [1,\t2]\n", {"a": [1, 2]}),
        ("a: |#\n  x\n", {"a": "x\n"}),
        ("{a?b: 1}\n", {"a?b": 1}),
        ("x: [a?b]\n", {"x": ["a?b"]}),
    ],
)
def test_valid_yaml_the_pure_scanner_refuses_is_read_by_the_c_loader(
    text: str, value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one difference between the loaders: libyaml reads these; PyYAML's pure scanner
    refuses them (as it always did: ``CONFHUB_YAML_LOADER=pure``)."""
    assert outcome(text, "c", monkeypatch) == ("value", value)
    pure = outcome(text, "pure", monkeypatch)
    assert pure[0] == "error"
    assert any(m in pure[1] for m in PURE_ONLY)
    # A tab as indentation is refused by both, as YAML says.
    assert outcome("a:\n\t- 1\n", "c", monkeypatch)[0] == "error"


@needs_c
@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
            ),
            max_leaves=15,
        ),
        max_size=5,
    )
)
def test_c_and_pure_loaders_agree_on_dumped_documents(document: dict[str, Any]) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert outcome(text, "c", monkeypatch) == outcome(text, "pure", monkeypatch)


@needs_c
def test_the_c_loader_is_the_default() -> None:
    assert yaml_loader_kind() == "c"


@pytest.mark.parametrize("value", ["pure", "PURE", " pure "])
def test_the_environment_variable_selects_the_pure_loader(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(YAML_LOADER_ENV, value)
    assert yaml_loader_kind() == "pure"
    assert parse_document("a: {b: 1}\n", "yaml", source="s") == {"a": {"b": 1}}


@pytest.mark.parametrize("kind", ["c", "pure"])
def test_a_yaml_file_through_the_hub_with_each_loader(
    kind: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The public path (a ``file:`` source in a hub) gives the same snapshot and the same
    line locations for explain with either loader."""
    if kind == "c" and not HAS_C:
        pytest.skip("PyYAML has no usable libyaml (C) loader")
    if kind == "pure":
        monkeypatch.setenv(YAML_LOADER_ENV, "pure")
    path = tmp_path / "app.yaml"
    path.write_text("db:\n  host: h\n  port: 5432\nflags: [a, b]\nmode: no\n")
    with confhub.Hub([f"file:{path}?watch=false"], autoload=False) as hub:
        assert yaml_loader_kind() == kind
        assert hub.snapshot().to_dict() == {
            "db": {"host": "h", "port": 5432}, "flags": ("a", "b"), "mode": "no",
        }  # fmt: skip
        assert f"{path}:3" in str(hub.explain("db.port"))
