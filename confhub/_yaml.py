"""The YAML loaders: libyaml's parser (``CSafeLoader`` base) when PyYAML has it, else PyYAML's
pure-Python one; one strict constructor and resolver for both, so the typing rules, the
bounds and the errors are the same (see :mod:`confhub._parsers` for what is refused)."""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING, Any

from ._docbounds import MAX_DEPTH, MAX_NODES, _Where
from ._errors import SourceFormatError, SpecError

if TYPE_CHECKING:
    import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


#: The environment variable that picks the YAML loader: ``pure`` forces PyYAML's pure-Python
#: loader; anything else (or unset) uses libyaml's C parser when PyYAML has it (see
#: :func:`yaml_loader_kind`). Both give the same values and the same errors.
YAML_LOADER_ENV = "CONFHUB_YAML_LOADER"
#: libyaml limits nesting (1000 levels) from 0.2.6 on; an older one could exhaust the C stack
#: on a deeply nested document before :func:`_measure_yaml` sees it, so it is not used.
_LIBYAML_MIN = (0, 2, 6)


@functools.cache
def _c_loader_available() -> bool:
    try:
        import yaml
        from yaml import _yaml
    except ImportError:
        return False
    if not getattr(yaml, "__with_libyaml__", False) or not hasattr(yaml, "CSafeLoader"):
        return False
    try:
        version = tuple(_yaml.get_version())
    except Exception:  # noqa: BLE001 - an unknown build: use the pure loader
        return False
    return version >= _LIBYAML_MIN


def yaml_loader_kind() -> str:
    """Which YAML loader :func:`parse_document` uses now: ``"c"`` (libyaml's parser, the
    default when PyYAML was built with libyaml >= 0.2.6) or ``"pure"`` (PyYAML's pure-Python
    parser; forced with the environment variable ``CONFHUB_YAML_LOADER=pure``). Values are
    constructed by the same Python code either way, with the same typing rules and bounds."""
    if os.environ.get(YAML_LOADER_ENV, "").strip().lower() == "pure":
        return "pure"
    return "c" if _c_loader_available() else "pure"


@functools.cache
def _strict_loader(kind: str = "pure") -> type[yaml.SafeLoader]:
    """Build (once per kind) the YAML loader: safe, with duplicate and non-string keys refused.

    ``kind`` is ``"pure"`` (on :class:`yaml.SafeLoader`) or ``"c"`` (on
    :class:`yaml.CSafeLoader`: libyaml scans, parses and composes; the constructor, the
    resolver and therefore every typing rule below are the same Python code).
    """
    import yaml

    base: Any = yaml.CSafeLoader if kind == "c" else yaml.SafeLoader
    mapping_node = yaml.MappingNode
    constructor_error = yaml.constructor.ConstructorError

    class StrictLoader(base):  # type: ignore[misc]
        """A SafeLoader that refuses duplicate keys and keys that are not strings."""

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            if not isinstance(node, mapping_node):  # pragma: no cover - YAML's contract
                return super().construct_mapping(node, deep=deep)
            pairs = node.value
            construct = self.construct_object
            seen: set[Any] = set()
            keys: list[Any] = []
            merge = False
            for key_node, _ in pairs:
                if key_node.tag == _MERGE_TAG:
                    merge = True  # "<<: *base" then overriding a merged key is not a duplicate
                    continue
                key = construct(key_node, deep=True)
                kind = type(key)
                if kind is not str and (kind is bool or not isinstance(key, (str, int))):
                    raise constructor_error(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found a key that is not a string ({key!r}); quote it",
                        key_node.start_mark,
                    )
                if key in seen:
                    raise constructor_error(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
                keys.append(key)
            if merge:  # SafeConstructor resolves the merges (it rewrites node.value)
                mapping = super().construct_mapping(node, deep=deep)
                return {str(k) if isinstance(k, int) else k: v for k, v in mapping.items()}
            # No merge: the keys are built (and memoized); build the values in order, as
            # BaseConstructor.construct_mapping does. An int key becomes its text.
            out: dict[str, Any] = {}
            for key, (_, value_node) in zip(keys, pairs, strict=True):
                out[key if type(key) is str else str(key)] = construct(value_node, deep=deep)
            return out

    _use_agreed_schema(StrictLoader)
    return StrictLoader


#: How plain scalars are typed: only where YAML 1.1 (PyYAML's, and most writers') and YAML
#: 1.2's core schema agree. Where they disagree the scalar stays a string: ``yes``/``no``/
#: ``on``/``off`` (1.1 booleans), ``0o12``/``0b101``/``1_000``/``1:20`` (numbers in one of
#: them), dates (1.1 timestamps), ``1e3``/``1.5e3`` (1.2 floats). Typed binding still turns
#: such text into a bool, int or float field. A leading-zero integer (``0644``: octal in 1.1,
#: decimal in 1.2) resolves to int only to be refused as ambiguous.
_YAML_AGREED = (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_MERGE_TAG, r"^(?:<<)$", "<"),
)
#: Explicit tags whose values a configuration cannot hold (bytes, sets, dates, pairs).
_YAML_REFUSED_TAGS = ("binary", "set", "timestamp", "omap", "pairs")


def _use_agreed_schema(loader: type[yaml.SafeLoader]) -> None:
    """Type plain scalars only where YAML 1.1 and 1.2 agree (:data:`_YAML_AGREED`) and keep
    values to JSON's types: explicit ``!!binary``, ``!!set``, ``!!timestamp``, ``!!omap``
    and ``!!pairs`` are refused; ``!!int``/``!!float``/``!!bool`` take 1.2's spellings."""
    import yaml

    loader.yaml_implicit_resolvers = {}
    for tag, pattern, first in _YAML_AGREED:
        loader.add_implicit_resolver(tag, re.compile(pattern), list(first))

    def scalar(self: yaml.SafeLoader, node: yaml.Node) -> str:
        return str(self.construct_scalar(node))  # type: ignore[arg-type]

    def refuse(node: yaml.Node, problem: str) -> yaml.constructor.ConstructorError:
        return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)

    def construct_bool(self: yaml.SafeLoader, node: yaml.Node) -> bool:
        value = scalar(self, node)
        if value.lower() not in ("true", "false"):
            raise refuse(node, f"{value!r} is not a boolean; write true or false")
        return value.lower() == "true"

    def construct_int(self: yaml.SafeLoader, node: yaml.Node) -> int:
        value = scalar(self, node)
        digits = value.lstrip("-+")
        if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
            raise refuse(
                node,
                f"{value} is ambiguous (YAML 1.1 reads a leading zero as octal, YAML 1.2 as "
                "decimal); quote it, or write the number without the leading zero (0o... for "
                "octal)",
            )
        if digits[:2] in ("0o", "0x"):
            number = int(digits[2:], 8 if digits[1] == "o" else 16)
            return -number if value.startswith("-") else number
        return int(value)

    def construct_float(self: yaml.SafeLoader, node: yaml.Node) -> float:
        value = scalar(self, node).lower()
        if value.endswith((".inf", ".nan")):
            return float(value.replace(".", ""))
        return float(value)

    def construct_refused(self: yaml.SafeLoader, node: yaml.Node) -> Any:
        tag = node.tag.rsplit(":", 1)[-1]
        raise refuse(node, f"a !!{tag} value cannot be a configuration value; use a string")

    loader.add_constructor("tag:yaml.org,2002:bool", construct_bool)
    loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    loader.add_constructor("tag:yaml.org,2002:float", construct_float)
    for name in _YAML_REFUSED_TAGS:
        loader.add_constructor(f"tag:yaml.org,2002:{name}", construct_refused)


def _measure_yaml(root: yaml.Node, where: _Where) -> None:
    """Refuse a node graph that nests too deep or expands (through aliases) too far.

    Aliases make the composed graph a DAG: sizes are memoized per node, so this costs time
    proportional to the text, however large the expansion would be.
    """
    import yaml

    memo: dict[int, tuple[int, int]] = {}
    scalar_node, mapping_node = yaml.ScalarNode, yaml.MappingNode

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        known = memo.get(id(node))
        if known is None:
            if depth > MAX_DEPTH:
                raise where.error(
                    f"nesting deeper than {MAX_DEPTH} levels; refusing it",
                    node.start_mark.line + 1,
                )
            size, height = 1, 0
            children: list[yaml.Node] = []
            if isinstance(node, mapping_node):
                children = [child for pair in node.value for child in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            for child in children:
                if type(child) is scalar_node:
                    # A scalar is one value, no deeper: what measure(child) would return.
                    if depth >= MAX_DEPTH:
                        raise where.error(
                            f"nesting deeper than {MAX_DEPTH} levels; refusing it",
                            child.start_mark.line + 1,
                        )
                    size += 1
                    if not height:
                        height = 1
                else:
                    child_size, child_height = measure(child, depth + 1)
                    size += child_size
                    if child_height >= height:
                        height = child_height + 1
                if size > MAX_NODES:
                    break
            known = memo[id(node)] = (size, height)
        size, height = known
        if size > MAX_NODES:
            raise where.error(
                f"the document expands to more than {MAX_NODES:,} values "
                "(a YAML alias bomb?); refusing it",
                node.start_mark.line + 1,
            )
        if depth + height > MAX_DEPTH:
            raise where.error(
                f"nesting deeper than {MAX_DEPTH} levels; refusing it", node.start_mark.line + 1
            )
        return known

    measure(root, 0)


class _RetryPure(Exception):
    """The C loader failed: the pure loader reads the text again for today's exact message."""


class _Decided(Exception):
    """A refusal from the C path that the pure loader would word the same: raised as is."""

    def __init__(self, error: SourceFormatError) -> None:
        super().__init__(str(error))
        self.error = error


def _parse_yaml(text: str, where: _Where, kind: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise SpecError(
            f"{where.source}: YAML support is not installed; pip install 'confhub[yaml]'",
            spec=where.source,
        ) from None
    return _load_yaml(yaml, text, where, kind)


def _load_yaml(yaml: Any, text: str, where: _Where, kind: str) -> Any:
    retry = kind == "c"
    try:
        # The pure reader checks the whole text for unprintable characters right here; the
        # C one encodes it to UTF-8 (a lone surrogate fails: ValueError).
        loader = _strict_loader(kind)(text)
    except (yaml.YAMLError, ValueError) as exc:
        if retry:
            raise _RetryPure from None
        if not isinstance(exc, yaml.YAMLError):
            raise  # parse_document words it, as it always did
        raise where.error(f"invalid YAML: {exc}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            _measure_yaml(node, where)
        except SourceFormatError as exc:
            if retry:  # the same node graph as the pure loader's: the same words
                raise _Decided(exc) from None
            raise
        return loader.construct_document(node)
    except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError) as exc:
        if retry:
            raise _RetryPure from None
        if isinstance(exc, RecursionError):
            raise  # parse_document words it ("nesting deeper than ...")
        # SafeConstructor's scalar constructors raise these for bad tagged scalars
        # ("!!int zz", an empty "!!int", "!!timestamp 2001-99-14").
        raise where.error(f"invalid YAML: a value cannot be constructed ({exc})") from None
    except yaml.MarkedYAMLError as exc:
        if retry and "maximum nesting depth" in str(exc.problem):
            # libyaml stops at 1000 levels, far past MAX_DEPTH, where the pure loader runs
            # out of recursion (seconds later) and is refused with these very words.
            error = where.error(f"nesting deeper than {MAX_DEPTH} levels; refusing it")
            raise _Decided(error) from None
        if retry:
            raise _RetryPure from None
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        raise where.error(f"invalid YAML: {exc.problem or exc.context}", line, column) from None
    except yaml.YAMLError as exc:
        if retry:
            raise _RetryPure from None
        raise where.error(f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()

