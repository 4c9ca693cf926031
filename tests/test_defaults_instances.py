"""Defaults in code may be a mapping or an instance of an attrs class, a dataclass or a pydantic
model; field aliases become the keys a source would hold, so a file's ``max-size`` overrides
the default of the aliased field, and strict binding sees no unknown key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import attrs
import pydantic
import pytest

import confhub


@dataclasses.dataclass(frozen=True)
class Pool:
    host: str = "localhost"
    max_size: int = dataclasses.field(default=3, metadata={"confhub_key": "max-size"})


@dataclasses.dataclass(frozen=True)
class App:
    pool: Pool = dataclasses.field(default_factory=Pool)
    debug: bool = False


@attrs.frozen
class AttrsApp:
    max_size: int = attrs.field(default=5, metadata={"confhub_key": "max-size"})


class PydanticPool(pydantic.BaseModel):
    host: str = "pyhost"
    max_size: int = pydantic.Field(default=4, alias="max-size")


def test_a_dataclass_instance_as_defaults_under_a_file(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text("[pool]\nmax-size = 9\n", encoding="utf-8")
    with confhub.Hub([App(), f"file:{config}"], autoload=False) as hub:
        assert hub.snapshot().to_dict() == {
            "pool": {"host": "localhost", "max-size": 9},
            "debug": False,
        }
        assert hub.bind(App) == App(Pool("localhost", 9), False)  # strict: nothing unknown
        assert hub.explain("pool.host").source == "defaults"


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        (AttrsApp(), {"max-size": 5}),
        (PydanticPool(), {"host": "pyhost", "max-size": 4}),
    ],
)
def test_attrs_and_pydantic_instances_as_defaults(defaults: object, expected: dict) -> None:
    with confhub.Hub([defaults], autoload=False) as hub:
        assert hub.snapshot().to_dict() == expected
        assert hub.bind(type(defaults)) == defaults


def test_a_class_is_not_defaults() -> None:
    """The class itself (a common slip for an instance) is refused, naming what is accepted."""
    with pytest.raises(confhub.SpecError, match="attrs, dataclass or pydantic instance"):
        confhub.Hub([App], autoload=False)
