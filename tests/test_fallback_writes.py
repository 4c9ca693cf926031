"""hub.write(source=...) naming a member of a Fallback group writes to that member (issue 14,
item 6): not to whichever member serves, and a compare-and-swap is checked against the named
member's revisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from confhub import Fallback, Hub, SourceUnavailableError, WriteConflictError, WriteError
from confhub.testing import MemoryStore


def _hub(primary: MemoryStore, alternate: MemoryStore, tmp_path: Path) -> Hub:
    return Hub(
        [{"d": "default"}, Fallback("memory:p", "memory:alt")],
        plugins=[primary, alternate],
        autoload=False,
        cache_dir=tmp_path,
        retry_initial=5,  # no promotion back during the test
        retry_max=5,
    )


def test_a_write_naming_the_alternate_goes_to_the_alternate_while_the_primary_serves(
    tmp_path: Path,
) -> None:
    """The primary serves; a write naming the alternate changes only the alternate's store."""
    primary, alternate = MemoryStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    with _hub(primary, alternate, tmp_path) as hub:
        assert hub.health().sources[1].active == "memory:p"
        hub.write("a", "written", source="memory:alt")
        assert alternate.data == {"a": "written"}
        assert primary.data == {"a": "p"}
        assert hub.get("a") == "p"  # the alternate does not serve: nothing changes here
        hub.write("a", "to the primary", source="memory:p")
        assert primary.data == {"a": "to the primary"}


def test_a_write_naming_the_primary_goes_to_the_primary_while_the_alternate_serves(
    tmp_path: Path,
) -> None:
    """The primary is down at start and the alternate serves; a write naming the primary
    goes to the primary (here a MemoryStore that takes writes while it fails loads)."""
    primary, alternate = MemoryStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    primary.fail()
    with _hub(primary, alternate, tmp_path) as hub:
        assert hub.health().sources[1].active == "memory:alt"
        hub.write("a", "written", source="memory:p")
        assert primary.data == {"a": "written"}
        assert alternate.data == {"a": "alt"}


def test_a_compare_and_swap_naming_a_member_uses_that_members_revisions(
    tmp_path: Path,
) -> None:
    """expected_revision is the named member's: the alternate's revision wins on the
    alternate, and the serving primary's revision conflicts there."""
    primary, alternate = MemoryStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    for i in range(5):
        primary.set("a", f"p{i}")  # the primary's key is at revision 6, the alternate's at 1
    with _hub(primary, alternate, tmp_path) as hub:
        with pytest.raises(WriteConflictError) as info:
            hub.write("a", "x", source="memory:alt", expected_revision=6)
        assert (info.value.expected, info.value.actual) == (6, 1)
        hub.write("a", "cas", source="memory:alt", expected_revision=1)
        assert alternate.data == {"a": "cas"}
        assert primary.data == {"a": "p4"}


def test_a_write_naming_the_group_goes_to_the_serving_member(tmp_path: Path) -> None:
    """The group's own name (or no name) still means "whichever member serves"."""
    primary, alternate = MemoryStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    with _hub(primary, alternate, tmp_path) as hub:
        hub.write("a", "group", source="memory:p | memory:alt")
        assert primary.data == {"a": "group"}
        hub.write("a", "highest")
        assert primary.data == {"a": "highest"}
        assert alternate.data == {"a": "alt"}


def test_a_write_to_a_member_that_cannot_be_reached_names_it(tmp_path: Path) -> None:
    """A named member that is down is not replaced by the serving one: its error surfaces."""

    class DownStore(MemoryStore):
        def write(self, key: str, value: object, expected_revision: object = None) -> int:
            raise SourceUnavailableError(f"memory:{self.name} is down", source="memory:p")

    primary, alternate = DownStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    primary.fail()
    with _hub(primary, alternate, tmp_path) as hub:
        with pytest.raises(SourceUnavailableError, match="memory:p is down"):
            hub.write("a", "x", source="memory:p")
        assert alternate.data == {"a": "alt"}


def test_a_write_naming_no_source_of_the_hub_is_refused(tmp_path: Path) -> None:
    """An unknown name is a WriteError listing the sources (unchanged)."""
    primary, alternate = MemoryStore("p", {"a": "p"}), MemoryStore("alt", {"a": "alt"})
    with _hub(primary, alternate, tmp_path) as hub, pytest.raises(WriteError, match="named"):
        hub.write("a", "x", source="memory:other")
