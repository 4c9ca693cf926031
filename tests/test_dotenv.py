"""The ``dotenv:`` source: python-dotenv's syntax (checked against python-dotenv itself on a
corpus), env's key mapping, provenance, errors with lines, and file watching."""

from __future__ import annotations

import io
import os
from pathlib import Path

import dotenv as python_dotenv
import dotenv.parser as python_dotenv_parser
import pytest
from core_testlib import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import confhub
from confhub._backends.dotenv import dotenv_values

#: .env texts users have, in python-dotenv's syntax (each is read the same by both).
CORPUS = [
    "A=1\nB=2\n",
    "export A=1\n",
    "A = spaced   \n",
    "A=value # a comment\nB=value#not-a-comment\n",
    "# only a comment\n\n\nA=x\n",
    "A=\nB= # comment\nC=#x\n",
    "A='single quoted # not a comment'\n",
    'A="double \\"escaped\\" \\n newline \\t tab"\n',
    "A='it\\'s'\n",
    'A="multi\nline\nvalue"\nB=after\n',
    "A='multi\nline'\n",
    "'QUOTED_KEY'=v\n",
    "A=1\nA=2\n",
    "A=a\\nb\n",
    "\ufeffA=bom\n",
    "A=1\r\nB=2\r\n",
    "HOST=db\nURL=postgres://${HOST}:5432/app\n",
    'URL="${HOST:-fallback}/x"\n',
    "A=${UNDEFINED_IN_TEST}\n",
    "A=$NOT_EXPANDED and $(not run)\n",
    "A=  leading spaces dropped\n",
    "  INDENTED=1\n",
    "A=\"\"\nB=''\n",
    "A=unicode é ✓\n",
    'A="a\\\\b"\n',
]


@pytest.mark.parametrize("text", CORPUS)
def test_parser_agrees_with_python_dotenv(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every corpus text reads to the same names and values as python-dotenv's."""
    monkeypatch.setenv("HOST", "from-environ")
    monkeypatch.delenv("UNDEFINED_IN_TEST", raising=False)
    expected = python_dotenv.dotenv_values(stream=io.StringIO(text))
    ours = {name: v[0] for name, v in dotenv_values(text, where="t").items()}
    assert ours == dict(expected)


def test_single_quotes_are_literal_unlike_python_dotenv() -> None:
    """'${HOST}' stays as written (the shell's rule); python-dotenv 1.x expands it."""
    text = "HOST=db\nA='${HOST}'\n"
    assert dotenv_values(text, where="t")["A"][0] == "${HOST}"
    assert python_dotenv.dotenv_values(stream=io.StringIO(text))["A"] == "db"


def test_interpolation_can_be_turned_off() -> None:
    """interpolate=False keeps ${VAR} as written."""
    assert dotenv_values("A=${B}\n", where="t", interpolate=False)["A"][0] == "${B}"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("A=1\nNOVALUE\n", 2, "no '='"),
        ('A=1\n\nB="never closed\n', 3, "never closed"),
        ('A="x" trailing\n', 1, "after the value"),
        ("A=1\n=novalue\n", 2, "cannot read"),
        ("A=\r'=\n", 2, "cannot read"),  # a key opening a quote must close it (Hypothesis)
    ],
)
def test_a_broken_line_is_an_error_naming_the_line(text: str, line: int, words: str) -> None:
    """python-dotenv warns and skips; confhub refuses the file, naming the line and the fix."""
    with pytest.raises(confhub.SourceFormatError, match=f"t:{line}: .*{words}"):
        dotenv_values(text, where="t")


def _hub(path: Path, *, prefix: str = "APP_", **options: object) -> confhub.Hub:
    spec = confhub.sources.dotenv(str(path), prefix=prefix, settle=0.02, **options)
    return confhub.Hub([spec], cache_dir=None)


def test_keys_map_like_env_and_explain_names_the_line(tmp_path: Path) -> None:
    """APP_DB__PORT -> db.port (a string), unrelated names skipped; explain shows file:line."""
    path = tmp_path / ".env"
    path.write_text("OTHER=1\nAPP_DB__HOST=db\nAPP_DB__URL=pg://${APP_DB__HOST}/x\n")
    with _hub(path) as hub:
        assert hub.snapshot().to_dict() == {"db": {"host": "db", "url": "pg://db/x"}}
        assert hub.explain("db.host").detail == f"{path}:2"
        assert hub.explain("db.url").detail == f"{path}:3 (expanded ${{APP_DB__HOST}})"
        assert hub.explain("db.url").source == f"dotenv:{path}"


def test_spec_string_form_reads_the_prefix(tmp_path: Path) -> None:
    """dotenv:PATH?prefix=APP_ is the same source as confhub.sources.dotenv(PATH, prefix=)."""
    path = tmp_path / "app.env"
    path.write_text("APP_PORT=5\nPORT=6\n")
    with confhub.Hub([f"dotenv:{path}?prefix=APP_"], cache_dir=None) as hub:
        assert hub.snapshot().to_dict() == {"port": "5"}


def test_two_names_for_one_key_is_an_error_naming_both(tmp_path: Path) -> None:
    """APP_DB__PORT and app_db__port both map to db.port: refused, both lines named."""
    path = tmp_path / ".env"
    path.write_text("APP_DB__PORT=1\nAPP_db__PORT=2\n")
    with pytest.raises(confhub.SourceFormatError, match=r"line 1.*line 2.*'db.port'"):
        _hub(path).start()


def test_missing_file_fails_unless_optional(tmp_path: Path) -> None:
    """A missing .env is a StartupError naming the path; optional=true reads nothing."""
    with pytest.raises(confhub.StartupError, match="does not exist"):
        _hub(tmp_path / ".env").start()
    with _hub(tmp_path / ".env", optional=True) as hub:
        assert hub.snapshot().to_dict() == {}


def test_not_utf8_is_an_error_naming_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are refused with the line."""
    path = tmp_path / ".env"
    path.write_bytes(b"APP_A=1\nAPP_B=\xff\n")
    with pytest.raises(confhub.SourceFormatError, match=r"\.env:2 is not valid UTF-8"):
        _hub(path).start()


def test_edit_and_atomic_replace_are_published(tmp_path: Path) -> None:
    """An in-place edit and a rename-over save each publish the new values."""
    path = tmp_path / ".env"
    path.write_text("APP_PORT=1\n")
    with _hub(path) as hub:
        changes: list[confhub.Change] = []
        hub.subscribe(changes.append)
        path.write_text("APP_PORT=2\n")
        wait_for(lambda: hub.get("port") == "2", what="in-place edit")
        tmp = tmp_path / ".env.tmp"
        tmp.write_text("APP_PORT=3\nAPP_NEW=x\n")
        os.replace(tmp, path)
        wait_for(lambda: hub.get("port") == "3" and hub.get("new") == "x", what="replace")
        wait_for(lambda: len(changes) >= 2)
        assert [c.source for c in changes] == [f"dotenv:{path}"] * len(changes)


def test_a_broken_save_keeps_the_last_good_values(tmp_path: Path) -> None:
    """A save with a broken line is reported; the previous values keep serving."""
    path = tmp_path / ".env"
    path.write_text("APP_PORT=1\n")
    with _hub(path) as hub:
        errors: list[confhub.ErrorEvent] = []
        hub.subscribe(on_error=errors.append)
        path.write_text("APP_PORT=2\nBROKEN\n")
        wait_for(lambda: errors, what="the error event")
        assert "BROKEN has no '='" in str(errors[0].error)
        assert hub.get("port") == "1"
        assert hub.health().sources[0].state == "stale"


def test_file_source_on_a_dotenv_file_points_to_dotenv(tmp_path: Path) -> None:
    """file:.env is refused with the dotenv: spec to use instead."""
    (tmp_path / ".env").write_text("APP_A=1\n")
    with pytest.raises(confhub.SpecError, match=r"read it with dotenv:.*\.env\?prefix=APP_"):
        confhub.Hub([str(tmp_path / ".env")], cache_dir=None).start()


_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_CHARS = st.text(alphabet="ab #=\\'\"\t\n\r$", max_size=12)


@st.composite
def _line(draw: st.DrawFn) -> str:
    name = draw(_NAME)
    quote = draw(st.sampled_from(["", "'", '"']))
    value = draw(_CHARS)
    if quote == "" or quote == "'":
        value = value.replace("$", "")  # python-dotenv expands in single quotes (see above)
    export = draw(st.sampled_from(["", "export "]))
    space = draw(st.sampled_from(["", " "]))
    comment = draw(st.sampled_from(["", " # c"]))
    return f"{export}{name}{space}={space}{quote}{value}{quote}{comment}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line(), max_size=5).map("\n".join))
def test_generated_files_read_as_python_dotenv_reads_them(text: str) -> None:
    """Where python-dotenv reads every line, confhub reads the same values; where it skips a
    line as broken, confhub refuses the file."""
    bindings = list(python_dotenv_parser.parse_stream(io.StringIO(text)))
    if any(b.error for b in bindings) or any(b.key and b.value is None for b in bindings):
        with pytest.raises(confhub.SourceFormatError):
            dotenv_values(text, where="t", environ={})
        return
    expected = python_dotenv.dotenv_values(stream=io.StringIO(text), interpolate=False)
    ours = dotenv_values(text, where="t", interpolate=False, environ={})
    assert {k: v[0] for k, v in ours.items()} == dict(expected)
