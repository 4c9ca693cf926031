"""The ``argv:`` source: the documented mapping of command-line options to keys."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import attrs
import pytest

import confhub
from confhub._backends.argv import parse_argv


def _values(*args: str, prefix: str = "") -> dict[str, str]:
    return parse_argv(args, prefix, source="argv:")[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--db.port=5"], {"db.port": "5"}),
        (["--db.port", "5"], {"db.port": "5"}),
        (["--db__port", "5"], {"db.port": "5"}),
        (["--pool-size", "3"], {"pool_size": "3"}),
        (["--DB.Host=h"], {"db.host": "h"}),
        (["--debug"], {"debug": "true"}),
        (["--debug", "--port=1"], {"debug": "true", "port": "1"}),
        (["--no-debug"], {"debug": "false"}),
        (["--offset", "-5"], {"offset": "-5"}),
        (["--a=1", "--a=2"], {"a": "2"}),
        (["--eq=a=b"], {"eq": "a=b"}),
        (["--empty="], {"empty": ""}),
        (["serve", "-v", "--port=1", "--", "--after=1"], {"port": "1"}),
    ],
)
def test_mapping(args: list[str], expected: dict[str, str]) -> None:
    """Each documented form maps to its key and string value."""
    assert _values(*args) == expected


def test_prefix_selects_and_strips() -> None:
    """argv:set. reads only --set.* options, without the prefix."""
    assert _values("--set.db.port=5", "--verbose", prefix="set.") == {"db.port": "5"}


@pytest.mark.parametrize("arg", ["--=5", "--.a=1", "--a..b=1", "--a b=1", "--é=1"])
def test_an_option_that_is_not_a_key_is_an_error_naming_it(arg: str) -> None:
    """A malformed option is a SourceFormatError naming its position and the fix."""
    with pytest.raises(confhub.SourceFormatError, match=r"argv\[0\].*--section.key=value"):
        _values(arg)


@attrs.frozen
class Db:
    port: int = 0
    debug: bool = False


def test_explicit_list_binds_typed_and_explains_the_argument() -> None:
    """confhub.sources.argv([...]) is a source; values bind like env values; explain names it."""
    spec = confhub.sources.argv(["--db.port", "6000", "--db.debug"])
    with confhub.Hub([{"db": {"port": 1}}, spec], cache_dir=None) as hub:
        assert hub.bind(Db, prefix="db") == Db(6000, True)
        explained = hub.explain("db.port")
        assert (explained.source, explained.detail) == ("argv:", "argv[0] --db.port")
        assert hub.health().sources[1].state == "live"


def test_explicit_list_must_be_strings() -> None:
    """A string or non-string items are refused in code, not split into characters."""
    with pytest.raises(confhub.SpecError, match="list of strings"):
        confhub.sources.argv("--db.port=5")  # type: ignore[arg-type]


def test_sys_argv_is_read_by_default() -> None:
    """argv: in a real process reads that process's command line."""
    script = textwrap.dedent(
        """
        import json, sys, confhub
        with confhub.Hub([{"port": "0"}, "argv:"], cache_dir=None) as hub:
            print(json.dumps(hub.snapshot().to_dict()))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "--port=7", "--db.host", "h", "positional"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(proc.stdout) == {"port": "7", "db": {"host": "h"}}


def test_argv_is_not_watchable() -> None:
    """confhub backends lists argv without the watch flag."""
    rows = {r["scheme"]: r for r in confhub.Hub([]).backends()}
    assert rows["argv"]["watchable"] is False
    assert rows["dotenv"]["watchable"] is rows["secrets"]["watchable"] is True
