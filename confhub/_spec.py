"""Source specs: the strings and objects that name where configuration comes from."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

import attrs

from ._errors import SpecError
from ._location import UrlParts, location_with_credentials, split_location
from ._redact import REDACTED, SECRET_OPTIONS

#: The default cap on one source's keys (its ``?max_keys=`` option). A document is bounded
#: by its parser (``MAX_NODES``, the same number), a key-value prefix by nothing but this: a
#: layer above it is refused, so a runaway writer cannot make every process hold it.
DEFAULT_MAX_KEYS = 1_000_000

#: The options the core reads on any source (fallbacks, the cache, polling, the key cap, the
#: start-time bound of one load), plus ``poll_interval`` and ``watch``, which sources of many
#: kinds accept. A backend accepts them without complaint (see ``confhub.kv.check_options``).
CORE_OPTIONS = frozenset(
    {
        "cache",
        "cache_secrets",
        "max_keys",
        "max_stale",
        "name",
        "optional",
        "poll",
        "poll_interval",
        "share",
        "timeout",
        "watch",
    }
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _freeze_options(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen(repr=False)
class SourceSpec:
    """One source of configuration.

    ``scheme`` picks the backend plugin (``file``, ``env``, ``etcd`` ...); ``location`` is
    everything after ``scheme:`` up to the query string (``//host:2379/myapp/`` for a URL,
    ``config.toml`` for a file); ``options`` are the query-string options and keyword
    arguments. ``data`` carries in-code content (the ``defaults`` source).

    The ``repr`` and :attr:`display` never show credentials: a URL password and options such
    as ``token`` or ``password`` are replaced by ``<redacted>``.
    """

    scheme: str
    location: str = ""
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_options)
    name: str | None = None
    data: Any = attrs.field(default=None, eq=False)

    @classmethod
    def parse(cls, text: str, **options: Any) -> SourceSpec:
        """Parse a spec string such as ``"etcd://127.0.0.1:2379/myapp/?format=json"``.

        A string without a scheme is a file path. Keyword ``options`` override query options.
        """
        if not isinstance(text, str) or not text.strip():
            raise SpecError(
                f"a source spec must be a non-empty string, not {text!r}; "
                "write e.g. 'file:config.toml', 'env:APP_' or 'etcd://host:2379/prefix/'",
                spec=repr(text),
            )
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        # A bare path ("config.toml", "/etc/app.yaml", "C:\\x") is a file.
        if not sep or not scheme.isidentifier() or len(scheme) == 1:
            scheme, rest = "file", text
        if rest.startswith("//"):
            # The core's one location parser: a "?" inside a password is not the query.
            location, found = location_with_credentials(rest)
            query = found or ""
        else:
            location, _, query = rest.partition("?")
        opts: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        opts.update(options)
        name = opts.pop("name", None)
        return cls(scheme=scheme.lower(), location=location, options=opts, name=name)

    @property
    def optional(self) -> bool:
        """Whether the source may be absent (``?optional=true``)."""
        return self.option_bool("optional", False)

    @property
    def url_parts(self) -> UrlParts | None:
        """The parsed ``//[user[:password]@]host:port[,host:port]/path`` location of a network
        spec (``None`` for other locations). Backends take their endpoints and credentials
        from here, and display, redaction and the cache identity are built from it, so a
        password holding ``#``, ``?``, ``/`` or ``@`` is one password everywhere and is never
        shown. See :mod:`confhub._location` for the rule."""
        if not self.location.startswith("//"):
            return None
        return split_location(self.location)[0]

    @property
    def url(self) -> str:
        """The spec as ``scheme:location``, credentials included: never log this."""
        return f"{self.scheme}:{self.location}"

    @property
    def display(self) -> str:
        """A name fit for logs, errors and ``explain``: credentials replaced."""
        if self.name:
            return self.name
        if self.scheme == "defaults":
            return "defaults"
        parts = self.url_parts
        if parts is not None:
            return f"{self.scheme}:{parts.display}"
        if self.scheme == "file":
            return f"file:{self.location}"
        if "@" in self.location:
            # A network spec missing its "//" ("etcd:u:pw@h:2379/app/") still hides its user info.
            return f"{self.scheme}:{split_location('//' + self.location)[0].display[2:]}"
        return self.url

    def option(self, name: str, default: Any = None) -> Any:
        """Return the option ``name``; for ``*_env`` style fallbacks see the backend docs."""
        return self.options.get(name, default)

    def option_bool(self, name: str, default: bool) -> bool:
        """Return option ``name`` as a bool, accepting ``true/false/1/0/yes/no/on/off``."""
        value = self.options.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SpecError(
            f"option {name}={value!r} of source {self.display} is not a boolean; use true or false",
            spec=self.display,
        )

    def option_float(self, name: str, default: float) -> float:
        """Return option ``name`` as a float (seconds, for timeouts)."""
        value = self.options.get(name)
        if value is None:
            return default
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SpecError(
                f"option {name}={value!r} of source {self.display} is not a number",
                spec=self.display,
            ) from None

    @property
    def max_keys(self) -> int:
        """The ``max_keys`` option: the most keys this source may hold (default
        :data:`DEFAULT_MAX_KEYS`). The hub enforces it on every layer; a backend may read it
        to stop a read early. A value that is not a whole number above 0 is a SpecError."""
        value = self.options.get("max_keys")
        if value is None:
            return DEFAULT_MAX_KEYS
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            cap = int(str(value).strip())
        except ValueError:
            cap = 0
        if cap < 1:
            raise SpecError(
                f"option max_keys={value!r} of source {self.display} is not a whole number "
                "above 0; write e.g. ?max_keys=200000",
                spec=self.display,
            )
        return cap

    def redacted_options(self) -> dict[str, Any]:
        """The options with credential values replaced, for display."""
        return {
            k: (REDACTED if k.lower() in SECRET_OPTIONS else v) for k, v in self.options.items()
        }

    def __repr__(self) -> str:
        return f"SourceSpec({self.display!r})"


def _as_specs(members: Sequence[SourceLike]) -> tuple[SourceSpec, ...]:
    return tuple(as_spec(m) for m in members)


@attrs.frozen(repr=False, init=False)
class Fallback:
    """One precedence slot whose members are tried in order until one loads.

    ``Fallback("etcd://a:2379/app/", "consul://b:8500/app/")`` reads etcd and, when etcd
    cannot be reached, Consul; each member's cache is tried after every live member failed.
    """

    members: tuple[SourceSpec, ...] = attrs.field(converter=_as_specs)
    name: str | None = None

    def __init__(self, *members: str | SourceSpec, name: str | None = None) -> None:
        if not members:
            raise SpecError("a Fallback needs at least one member", spec="Fallback()")
        self.__attrs_init__(members, name)

    @property
    def display(self) -> str:
        """The slot's display name."""
        return self.name or " | ".join(m.display for m in self.members)

    def __repr__(self) -> str:
        return f"Fallback({self.display!r})"


SourceLike = str | SourceSpec | Fallback | Mapping[str, Any] | Any


def _defaults_instance(obj: Any) -> bool:
    """An instance of an attrs class, a dataclass or a pydantic model (defaults in code)."""
    cls = type(obj)
    if attrs.has(cls) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return True
    return callable(getattr(cls, "model_dump", None)) and hasattr(cls, "model_fields")


def as_spec(source: SourceLike) -> SourceSpec:
    """Turn one member of a ``sources`` list into a :class:`SourceSpec`."""
    if isinstance(source, SourceSpec):
        return source
    if isinstance(source, str):
        return SourceSpec.parse(source)
    if isinstance(source, os.PathLike):
        return SourceSpec(scheme="file", location=os.fspath(source))
    if isinstance(source, Mapping) or _defaults_instance(source):
        return SourceSpec(scheme="defaults", data=source)
    raise SpecError(
        f"cannot use {type(source).__name__} as a source; give a spec string, a SourceSpec, "
        "or defaults: a mapping, or an attrs, dataclass or pydantic instance",
        spec=repr(type(source)),
    )


def as_slots(sources: Sequence[SourceLike]) -> tuple[Fallback, ...]:
    """Turn a ``sources`` list into precedence slots (lowest first).

    Every slot is a :class:`Fallback`; a plain source is a group of one.
    """
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
        raise SpecError(
            "sources must be a list of specs (lowest precedence first), "
            f"not {type(sources).__name__}",
            spec=repr(sources),
        )
    return tuple(s if isinstance(s, Fallback) else Fallback(as_spec(s)) for s in sources)
