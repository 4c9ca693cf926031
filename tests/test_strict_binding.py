"""Strict binding: unknown keys, shape errors with their source, policies, aliases, and the
kinds of classes that bind (attrs, dataclasses, pydantic models, TypedDicts).

Real files (TOML, JSON, YAML), a watched hub for live updates, real environment variables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import attrs
import pydantic
import pytest
from core_testlib import wait_for

from confhub import ConfigValidationError, ErrorEvent, Hub, UnknownKey, UnknownKeyError
from confhub.testing import MemoryStore


@attrs.frozen
class Db:
    host: str
    pool_size: int = 5


@attrs.frozen
class App:
    db: Db
    debug: bool = False


@attrs.frozen
class Pool:
    size: int = 1


@attrs.frozen
class Server:
    host: str
    port: int = 80


@attrs.frozen
class Fleet:
    pools: dict[str, Pool] = attrs.Factory(dict)
    labels: dict[str, str] = attrs.Factory(dict)
    servers: list[Server] = attrs.Factory(list)


@attrs.frozen
class Limits:
    max_size: int = attrs.field(metadata={"confhub_key": "max-size"})


@pytest.fixture
def started() -> Iterator[Callable[..., Hub]]:
    """Start a hub over the given sources (no plugins, no cache); closed at teardown."""
    hubs: list[Hub] = []

    def start(*sources: Any, **kwargs: Any) -> Hub:
        hub = Hub(list(sources), autoload=False, cache_dir=None, **kwargs).start()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.close()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- unknown keys from files, named with their file and line -------------------------------

DOCUMENTS = {
    "toml": '[db]\nhost = "h"\npool_sise = 50\n',
    "json": '{\n  "db": {\n    "host": "h",\n    "pool_sise": 50\n  }\n}\n',
    "yaml": "db:\n  host: h\n  pool_sise: 50\n",
}
LINES = {"toml": 3, "json": 4, "yaml": 3}


@pytest.mark.parametrize("kind", sorted(DOCUMENTS))
def test_a_typo_in_a_file_names_the_key_file_line_and_closest_field(
    tmp_path: Path, started: Callable[..., Hub], kind: str
) -> None:
    """``pool_sise`` in a TOML, JSON or YAML file is refused, naming the file, its line and
    the field it resembles."""
    path = _write(tmp_path / f"app.{kind}", DOCUMENTS[kind])
    hub = started(f"file:{path}")
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    (found,) = info.value.unknown
    assert found == UnknownKey(
        key="db.pool_sise",
        name="pool_sise",
        path="$.db.pool_sise",
        source=f"file:{path}",
        detail=f"{path}:{LINES[kind]}",
        suggestion="pool_size",
    )
    message = str(info.value)
    assert "unknown key 'pool_sise' (did you mean 'pool_size'?) @ $.db.pool_sise" in message
    assert f"{path}:{LINES[kind]}" in message
    assert 'unknown="ignore"' in message  # the way out
    assert isinstance(info.value, ConfigValidationError)


def test_a_misnamed_table_is_refused_and_the_missing_one_suggested(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """``[database]`` where the class has ``db``: the unknown table is named at its line,
    ``db`` suggested, and the missing field reported too."""
    path = _write(tmp_path / "app.toml", 'debug = true\n[database]\nhost = "h"\n')
    hub = started(f"file:{path}")
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    (found,) = info.value.unknown
    assert (found.key, found.suggestion, found.detail) == ("database", "db", f"{path}:2")
    assert any("required field missing @ $.db" in e for e in info.value.errors)


def test_a_nested_typo_is_found_under_a_prefix(tmp_path: Path, started: Callable[..., Hub]) -> None:
    """Binding at a prefix checks that table: the path is relative, the key is whole."""
    path = _write(tmp_path / "app.toml", '[db]\nhost = "h"\npool_sise = 50\n[other]\nx = 1\n')
    hub = started(f"file:{path}")
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(Db, prefix="db")
    (found,) = info.value.unknown
    assert (found.key, found.path) == ("db.pool_sise", "$.pool_sise")


def test_keys_outside_the_bound_prefix_are_not_checked(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """Only the bound table is the class's: other tables are free."""
    path = _write(tmp_path / "app.toml", '[db]\nhost = "h"\n[logging]\nlevel = "info"\n')
    hub = started(f"file:{path}")
    assert hub.bind(Db, prefix="db") == Db("h")


def test_unknown_keys_in_defaults_are_refused(started: Callable[..., Hub]) -> None:
    """Defaults given in code are checked like any other source."""
    hub = started({"db": {"host": "h", "pool_sise": 1}})
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    assert [(u.key, u.source) for u in info.value.unknown] == [("db.pool_sise", "defaults")]


def test_a_key_in_two_sources_names_the_higher_and_the_other(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """The error names the source in force first, then the others that hold the key."""
    path = _write(tmp_path / "app.toml", '[db]\nhost = "h"\npool_sise = 2\n')
    hub = started({"db": {"host": "d", "pool_sise": 1}}, f"file:{path}")
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    (found,) = info.value.unknown
    assert (found.source, found.also) == (f"file:{path}", ("defaults",))
    assert "(also in defaults)" in str(info.value)


def test_at_most_twenty_unknown_keys_are_listed(started: Callable[..., Hub]) -> None:
    """A whole foreign tree under the bound prefix gives a bounded error, saying so."""
    hub = started({"db": {"host": "h"}, **{f"k{i}": i for i in range(50)}})
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    assert len(info.value.unknown) == 20
    assert "(only the first 20 unknown keys are listed)" in str(info.value)


# -- the environment never makes a key unknown ----------------------------------------------


def test_environment_variables_never_make_a_key_unknown(
    tmp_path: Path, started: Callable[..., Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unrelated variables under the prefix (and a typo in one) bind without a word; the
    declared ones still apply."""
    monkeypatch.setenv("APP_DB__POOLSIZE", "3")
    monkeypatch.setenv("APP_HOME_DIR", "/somewhere")
    monkeypatch.setenv("APP_DB__POOL_SIZE", "9")
    path = _write(tmp_path / "app.toml", '[db]\nhost = "h"\n')
    hub = started(f"file:{path}", "env:APP_")
    assert hub.get("db.poolsize") == "3"
    assert hub.bind(App) == App(Db("h", 9))


def test_a_key_the_environment_and_a_file_both_hold_names_the_file(
    tmp_path: Path, started: Callable[..., Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment masks nothing: a file holding the unknown key is still at fault."""
    monkeypatch.setenv("APP_DB__POOL_SISE", "3")
    path = _write(tmp_path / "app.toml", '[db]\nhost = "h"\npool_sise = 1\n')
    hub = started(f"file:{path}", "env:APP_")
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(App)
    assert [(u.source, u.also) for u in info.value.unknown] == [(f"file:{path}", ())]


# -- shapes: a value where a table belongs, and the reverse ----------------------------------


def test_a_scalar_where_a_table_is_expected_names_its_source(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """``db = "oops"`` says a table was expected, with the file and line of ``db``."""
    path = _write(tmp_path / "app.toml", 'debug = false\ndb = "oops"\n')
    hub = started(f"file:{path}")
    with pytest.raises(ConfigValidationError) as info:
        hub.bind(App)
    assert info.value.errors == (
        f"expected a table (Db), got str 'oops' @ $.db (from file:{path} ({path}:2))",
    )
    assert "string indices" not in str(info.value)


def test_a_table_where_a_value_is_expected_names_its_source(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """``[db.host]`` where ``host`` is a string says so, with the source of the table."""
    path = _write(tmp_path / "app.toml", '[db.host]\nname = "h"\n')
    hub = started(f"file:{path}")
    with pytest.raises(ConfigValidationError) as info:
        hub.bind(App)
    (line,) = info.value.errors
    assert line.startswith("expected str, got a table @ $.db.host (from file:")


def test_shape_errors_are_reported_under_every_policy(started: Callable[..., Hub]) -> None:
    """``unknown="ignore"`` is about keys, not about a value where a table belongs."""
    hub = started({"db": "oops"})
    with pytest.raises(ConfigValidationError, match=r"expected a table \(Db\)"):
        hub.bind(App, unknown="ignore")


@attrs.frozen
class Creds:
    user: str = "u"


@attrs.frozen
class WithSecret:
    password: Creds


def test_a_secret_where_a_table_is_expected_is_not_quoted(started: Callable[..., Hub]) -> None:
    """The shape error of a secret-looking key never shows its value."""
    hub = started({"password": "hunter2"})
    with pytest.raises(ConfigValidationError) as info:
        hub.bind(WithSecret)
    assert "hunter2" not in str(info.value)
    assert "$.password" in str(info.value)


# -- dict fields accept any key; lists and dict values are checked -----------------------------


def test_dict_fields_accept_any_key_and_check_their_values(started: Callable[..., Hub]) -> None:
    """``dict[str, X]`` takes any key; a typo inside an ``X`` is still found."""
    hub = started({"pools": {"main": {"size": 2}}, "labels": {"any-thing": "x"}})
    assert hub.bind(Fleet) == Fleet({"main": Pool(2)}, {"any-thing": "x"})
    bad = started({"pools": {"main": {"sise": 2}}})
    with pytest.raises(UnknownKeyError) as info:
        bad.bind(Fleet)
    (found,) = info.value.unknown
    assert (found.key, found.path, found.suggestion) == (
        "pools.main.sise",
        "$.pools.main.sise",
        "size",
    )


def test_a_typo_inside_a_list_of_tables_names_the_list(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """``[[servers]] hots = ...``: the path has the item, the source is the list's."""
    path = _write(tmp_path / "app.toml", '[[servers]]\nhost = "a"\n[[servers]]\nhots = "b"\n')
    hub = started(f"file:{path}")
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(Fleet)
    (found,) = info.value.unknown
    assert (found.key, found.path, found.suggestion) == ("servers", "$.servers[1].hots", "host")
    assert found.source == f"file:{path}"


# -- policies -------------------------------------------------------------------------------


def test_warn_policy_binds_and_logs_the_unknown_keys(
    started: Callable[..., Hub], caplog: pytest.LogCaptureFixture
) -> None:
    """``unknown="warn"`` binds the declared fields and logs each unknown key with its source."""
    hub = started({"db": {"host": "h", "pool_sise": 1}})
    with caplog.at_level(logging.WARNING, logger="confhub"):
        assert hub.bind(App, unknown="warn") == App(Db("h"))
    (record,) = [r for r in caplog.records if r.name == "confhub.binding"]
    assert "unknown key 'pool_sise' (did you mean 'pool_size'?)" in record.getMessage()
    assert "(from defaults)" in record.getMessage()


def test_ignore_policy_binds_without_a_word(
    started: Callable[..., Hub], caplog: pytest.LogCaptureFixture
) -> None:
    """``unknown="ignore"`` is the old behaviour: undeclared keys are dropped silently."""
    hub = started({"db": {"host": "h", "pool_sise": 1}})
    with caplog.at_level(logging.DEBUG, logger="confhub"):
        assert hub.bind(App, unknown="ignore") == App(Db("h"))
    assert not [r for r in caplog.records if r.name == "confhub.binding"]


def test_the_hub_default_policy_applies_unless_a_call_says(started: Callable[..., Hub]) -> None:
    """``Hub(unknown="ignore")`` sets the default; ``bind(unknown="forbid")`` overrides it."""
    hub = started({"db": {"host": "h", "pool_sise": 1}}, unknown="ignore")
    assert hub.bind(App) == App(Db("h"))
    with pytest.raises(UnknownKeyError):
        hub.bind(App, unknown="forbid")


def test_a_misspelt_policy_is_refused() -> None:
    """A policy that does not exist is a ValueError listing the policies, at construction."""
    with pytest.raises(ValueError, match="forbid, warn, ignore"):
        Hub([], autoload=False, unknown="strict")  # type: ignore[arg-type]


def test_a_view_refused_at_creation_is_not_kept(started: Callable[..., Hub]) -> None:
    """``hub.view`` raises like ``bind`` when the configuration has unknown keys, and keeps
    no view: under another policy the same class makes one."""
    hub = started({"db": {"host": "h", "pool_sise": 1}})
    with pytest.raises(UnknownKeyError):
        hub.view(App)
    assert hub.view(App, unknown="ignore").current == App(Db("h"))
    with pytest.raises(UnknownKeyError):
        hub.view(App)


def test_views_of_one_class_with_two_policies_are_two_views(started: Callable[..., Hub]) -> None:
    """The policy is part of a view's identity."""
    hub = started({"db": {"host": "h"}})
    assert hub.view(App) is hub.view(App, unknown="forbid")
    assert hub.view(App) is not hub.view(App, unknown="ignore")
    assert hub.view(App, unknown="warn").unknown == "warn"


# -- live updates ---------------------------------------------------------------------------


LIVE = {
    "toml": ('[db]\nhost = "h"\npool_size = {n}\n', '[db]\nhost = "h"\npool_sise = {n}\n', 3),
    "json": (
        '{{\n  "db": {{\n    "host": "h",\n    "pool_size": {n}\n  }}\n}}\n',
        '{{\n  "db": {{\n    "host": "h",\n    "pool_sise": {n}\n  }}\n}}\n',
        4,
    ),
    "yaml": ("db:\n  host: h\n  pool_size: {n}\n", "db:\n  host: h\n  pool_sise: {n}\n", 3),
}


@pytest.mark.parametrize("kind", sorted(LIVE))
def test_a_typo_introduced_live_is_rejected_and_last_good_kept(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A watched file changed from ``pool_size = 3`` to ``pool_sise = 30``: rejected, the
    view and reads keep 3, an error event and an ERROR line name the key and line, health
    says stale; the fix applies."""
    good, typo, line = LIVE[kind]
    path = _write(tmp_path / f"app.{kind}", good.format(n=3))
    errors: list[ErrorEvent] = []
    with Hub([f"file:{path}?settle=0.05"], autoload=False, cache_dir=None) as hub:
        view = hub.view(App)
        hub.subscribe(on_error=errors.append)
        path.write_text(typo.format(n=30), encoding="utf-8")
        wait_for(lambda: errors, what="the error event")
        error = errors[0].error
        assert isinstance(error, UnknownKeyError)
        assert [(u.key, u.detail) for u in error.unknown] == [("db.pool_sise", f"{path}:{line}")]
        assert view.current == App(Db("h", 3))
        assert hub.get("db.pool_size") == 3
        source = hub.health().sources[0]
        assert source.state == "stale"
        assert "pool_sise" in (source.last_error or "")
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("unknown key 'pool_sise'" in m and f"{path}:{line}" in m for m in logged)
        path.write_text(good.format(n=30), encoding="utf-8")
        wait_for(lambda: view.current == App(Db("h", 30)), what="the fix")
        assert hub.health().sources[0].state == "live"


def test_a_new_top_level_key_from_a_store_is_rejected_by_a_strict_view() -> None:
    """A key the class does not declare, added at the top, re-checks the view and is refused
    (under "ignore" such a change would not even re-bind)."""
    store = MemoryStore("app", {"db": {"host": "h"}})
    errors: list[ErrorEvent] = []
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=None) as hub:
        view = hub.view(App)
        hub.subscribe(on_error=errors.append)
        store.set("debgu", "true")
        wait_for(lambda: errors, what="the error event")
        assert isinstance(errors[0].error, UnknownKeyError)
        assert errors[0].error.unknown[0].suggestion == "debug"
        assert "debgu" not in hub.snapshot()
        assert view.current == App(Db("h"))
        store.delete("debgu")
        store.set("debug", "true")
        wait_for(lambda: view.current == App(Db("h"), debug=True), what="the fix")


def test_a_warn_view_logs_each_new_set_of_unknown_keys_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``"warn"`` view accepts the update and logs its unknown keys once, not per update."""
    store = MemoryStore("app", {"db": {"host": "h"}})
    with (
        caplog.at_level(logging.WARNING, logger="confhub"),
        Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=None) as hub,
    ):
        view = hub.view(App, unknown="warn")
        store.set("dbg", "1")
        store.set("db.host", "h2")
        store.set("db.host", "h3")
        wait_for(lambda: view.current == App(Db("h3")), what="the updates")
        store.set("extra", "2")
        wait_for(lambda: hub.get("extra", None) == "2", what="the second key")
    lines = [r.getMessage() for r in caplog.records if r.name == "confhub.binding"]
    assert len(lines) == 2, lines
    assert "'dbg'" in lines[0]
    assert "'extra'" in lines[1]


# -- aliases --------------------------------------------------------------------------------


def test_an_attrs_alias_binds_a_key_that_is_not_a_name(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """``metadata={"confhub_key": "max-size"}`` reads ``max-size``; errors use that key."""
    path = _write(tmp_path / "limits.toml", "max-size = 10\n")
    assert started(f"file:{path}").bind(Limits) == Limits(10)
    bad = _write(tmp_path / "bad.toml", 'max-size = "big"\n')
    with pytest.raises(ConfigValidationError) as info:
        started(f"file:{bad}").bind(Limits)
    (line,) = info.value.errors
    assert f"@ $.max-size (from file:{bad} ({bad}:1))" in line


def test_a_dataclass_alias_binds_and_unaliased_names_get_a_hint(
    started: Callable[..., Hub],
) -> None:
    """A dataclass field names its key the same way; without an alias, the error says how."""

    @dataclasses.dataclass(frozen=True)
    class Aliased:
        max_size: int = dataclasses.field(metadata={"confhub_key": "max-size"})

    @dataclasses.dataclass(frozen=True)
    class Plain:
        max_size: int = 1

    hub = started({"max-size": "7"})
    assert hub.bind(Aliased) == Aliased(7)
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(Plain)
    assert "needs an alias: metadata={'confhub_key': 'max-size'}" in str(info.value)
    assert info.value.unknown[0].suggestion == "max_size"


def test_an_aliased_attrs_instance_as_defaults_keeps_its_keys(started: Callable[..., Hub]) -> None:
    """An attrs instance given as defaults unstructures under its aliases."""
    hub = started(Limits(4))
    assert hub.get("max-size") == 4
    assert hub.bind(Limits) == Limits(4)


# -- the kinds of classes -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DcDb:
    host: str
    pool_size: int = 5


@dataclasses.dataclass(frozen=True)
class DcApp:
    db: DcDb
    debug: bool = False


def test_dataclasses_bind_and_are_strict(tmp_path: Path, started: Callable[..., Hub]) -> None:
    """Stdlib dataclasses bind with confhub's coercions, nested ones checked."""
    path = _write(tmp_path / "app.toml", 'debug = "yes"\n[db]\nhost = "h"\npool_size = "7"\n')
    assert started(f"file:{path}").bind(DcApp) == DcApp(DcDb("h", 7), debug=True)
    typo = _write(tmp_path / "typo.toml", '[db]\nhost = "h"\npool_sise = 1\n')
    with pytest.raises(UnknownKeyError) as info:
        started(f"file:{typo}").bind(DcApp)
    assert [(u.key, u.detail) for u in info.value.unknown] == [("db.pool_sise", f"{typo}:3")]


class PdDb(pydantic.BaseModel):
    host: str
    pool_size: int = pydantic.Field(5, alias="pool-size", gt=0)


class PdApp(pydantic.BaseModel):
    db: PdDb
    debug: bool = False


def test_a_pydantic_model_binds_through_its_own_validation(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """A model validates with ``model_validate``: its aliases and constraints apply."""
    path = _write(tmp_path / "app.toml", 'debug = "on"\n[db]\nhost = "h"\npool-size = "7"\n')
    assert started(f"file:{path}").bind(PdApp) == PdApp(
        db=PdDb(host="h", **{"pool-size": 7}), debug=True
    )


def test_a_pydantic_error_names_the_source_and_line_of_the_bad_value(
    tmp_path: Path, started: Callable[..., Hub]
) -> None:
    """pydantic's message, at the key's path, with the file and line that gave the value."""
    path = _write(tmp_path / "app.toml", '[db]\nhost = "h"\npool-size = 0\n')
    with pytest.raises(ConfigValidationError) as info:
        started(f"file:{path}").bind(PdApp)
    (line,) = info.value.errors
    assert line == (
        f"Input should be greater than 0 @ $.db.pool-size (from file:{path} ({path}:3))"
    )


def test_a_pydantic_model_is_strict_by_confhubs_policy(started: Callable[..., Hub]) -> None:
    """Unknown keys are confhub's to judge, with did-you-mean against the model's aliases."""
    hub = started({"db": {"host": "h", "pool_size": 1}})
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(PdApp)
    assert info.value.unknown[0].suggestion == "pool-size"
    assert hub.bind(PdApp, unknown="ignore") == PdApp(db=PdDb(host="h"))


def test_a_pydantic_models_own_extra_setting_still_applies(started: Callable[..., Hub]) -> None:
    """``extra="allow"`` declares any key welcome; ``extra="forbid"`` refuses even under
    ``unknown="ignore"`` (the model's validation has the last word), with the source."""

    class Open(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")
        a: int = 0

    class Closed(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        a: int = 0

    hub = started({"a": "1", "b": "2"})
    assert hub.bind(Open).model_extra == {"b": "2"}
    with pytest.raises(ConfigValidationError) as info:
        hub.bind(Closed, unknown="ignore")
    assert info.value.errors == ("Extra inputs are not permitted @ $.b (from defaults)",)
    with pytest.raises(UnknownKeyError) as strict:
        hub.bind(Closed)
    assert strict.value.errors == ("unknown key 'b' @ $.b (from defaults)",)  # said once


def test_a_pydantic_view_rejects_a_bad_live_value() -> None:
    """A live view of a model keeps the last good model when an update fails validation."""
    store = MemoryStore("app", {"db": {"host": "h", "pool-size": "2"}})
    errors: list[ErrorEvent] = []
    with Hub(["memory:app"], plugins=[store], autoload=False, cache_dir=None) as hub:
        view = hub.view(PdApp)
        hub.subscribe(on_error=errors.append)
        store.set("db.pool-size", "-1")
        wait_for(lambda: errors, what="the error event")
        assert "greater than 0 @ $.db.pool-size (from memory:app" in str(errors[0].error)
        assert view.current.db.pool_size == 2


def test_a_pydantic_model_inside_an_attrs_class_reports_its_paths(
    started: Callable[..., Hub],
) -> None:
    """A model nested in an attrs class: its errors have the full path and the source."""
    hub = started({"db": {"host": "h", "pool-size": "x"}})
    with pytest.raises(ConfigValidationError) as info:
        hub.bind(Outer)
    (line,) = info.value.errors
    assert "@ $.db.pool-size (from defaults)" in line


@attrs.frozen
class Outer:
    db: PdDb


class TdDb(TypedDict):
    host: str
    port: int


TdLimits = TypedDict("TdLimits", {"max-size": int})


def test_typeddicts_bind_closed_and_strict(started: Callable[..., Hub]) -> None:
    """A TypedDict binds its declared keys (coerced); others are unknown, or dropped under
    ``"ignore"``; the functional form names keys that are not Python names."""
    hub = started({"db": {"host": "h", "port": "5432", "prot": "1"}, "max-size": "3"})
    with pytest.raises(UnknownKeyError) as info:
        hub.bind(TdDb, prefix="db")
    assert info.value.unknown[0].suggestion == "port"
    assert hub.bind(TdDb, prefix="db", unknown="ignore") == {"host": "h", "port": 5432}
    assert hub.bind(TdLimits, unknown="ignore") == {"max-size": 3}


def test_plain_mappings_bind_any_keys(tmp_path: Path, started: Callable[..., Hub]) -> None:
    """``dict[str, Any]`` is a table of anything: nothing is unknown."""
    path = _write(tmp_path / "app.json", json.dumps({"a": {"b": 1}, "c": 2}))
    assert started(f"file:{path}").bind(dict[str, Any]) == {"a": {"b": 1}, "c": 2}
