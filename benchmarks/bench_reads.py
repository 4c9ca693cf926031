"""Read latency: ``hub.get`` and ``view.current`` against plain Python and against peers.

Floors: a nested-dict lookup ``d["a"]["b"]["c"]`` for dotted reads and a plain attrs
attribute chain ``cfg.a.b.c`` for typed reads, both measured in the same run. Peers
(dynaconf, pydantic-settings, python-configuration, OmegaConf) read the same key from the
same data and are reported against the nested-dict floor.

Run: ``.venv/bin/python -m benchmarks.bench_reads [--quick]``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

import confhub

from ._table import Row, header, na_row, parse_args, print_table, time_statements, versions

SIZES = (50, 10_000)
GET_TARGET = 1.5  # issue 9 item 7 (was 2.0)
VIEW_TARGET = 1.5
PEERS = ("dynaconf", "pydantic-settings", "python-configuration", "omegaconf")


@attrs.frozen
class B:
    c: int


@attrs.frozen
class A:
    b: B


@attrs.frozen
class Cfg:
    a: A


def make_data(n: int) -> dict[str, Any]:
    """``n`` leaves: ``a.b.c = 1`` plus ``n - 1`` fillers in square-ish sections."""
    fillers = n - 1
    per = max(1, math.isqrt(fillers))
    data: dict[str, Any] = {"a": {"b": {"c": 1}}}
    for i in range(fillers):
        data.setdefault(f"s{i // per}", {})[f"k{i % per}"] = i
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


# -- peers: each returns {row name: (statement, globals)}, or raises with the reason ------


def peer_dynaconf(data: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    from dynaconf import Dynaconf

    settings = Dynaconf(
        environments=False, settings_files=[], load_dotenv=False, envvar_prefix="CONFHUB_BENCH"
    )
    settings.update(data)
    assert settings.get("a.b.c") == 1
    assert settings.a.b.c == 1
    env = {"settings": settings}
    return {
        'dynaconf settings.get("a.b.c")': ('settings.get("a.b.c")', env),
        "dynaconf settings.a.b.c": ("settings.a.b.c", env),
    }


def peer_pydantic(data: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    from pydantic import BaseModel, ConfigDict
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class PB(BaseModel):
        model_config = ConfigDict(frozen=True)
        c: int

    class PA(BaseModel):
        model_config = ConfigDict(frozen=True)
        b: PB

    class Settings(BaseSettings):
        # Fillers are kept as extras, so the model holds the whole configuration.
        model_config = SettingsConfigDict(extra="allow", env_prefix="CONFHUB_BENCH_")
        a: PA

    settings = Settings(**data)
    assert settings.a.b.c == 1
    return {"pydantic-settings settings.a.b.c": ("settings.a.b.c", {"settings": settings})}


def peer_python_configuration(data: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    from config import config_from_dict

    cfg = config_from_dict(data)
    assert cfg["a.b.c"] == 1
    return {'python-configuration cfg["a.b.c"]': ('cfg["a.b.c"]', {"cfg": cfg})}


def peer_omegaconf(data: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(data)
    assert cfg.a.b.c == 1
    env = {"cfg": cfg, "OmegaConf": OmegaConf}
    return {
        "omegaconf cfg.a.b.c": ("cfg.a.b.c", env),
        'omegaconf OmegaConf.select(cfg, "a.b.c")': ('OmegaConf.select(cfg, "a.b.c")', env),
    }


PEER_SETUPS = (
    ("dynaconf", peer_dynaconf, 2),
    ("pydantic-settings", peer_pydantic, 1),
    ("python-configuration", peer_python_configuration, 1),
    ("omegaconf", peer_omegaconf, 2),
)


def run_size(n: int, *, number: int, rounds: int) -> list[Row]:
    data = make_data(n)
    flat = flatten(data)
    assert len(flat) == n
    hub = confhub.Hub([data]).start()  # the default hub (a dict source: no cache involved)
    try:
        # Cfg declares one key of the n (strict binding would refuse the others); reading
        # view.current costs the same under every policy.
        view = hub.view(Cfg, unknown="ignore")
        cfg = Cfg(A(B(1)))
        assert hub.get("a.b.c") == 1
        assert view.current.a.b.c == 1
        cases: dict[str, tuple[str, dict[str, Any]]] = {
            "empty loop (pass)": ("pass", {}),
            'floor: d["a"]["b"]["c"]': ('d["a"]["b"]["c"]', {"d": data}),
            'flat dict d["a.b.c"]': ('d["a.b.c"]', {"d": flat}),
            'hub.get("a.b.c")': ('hub.get("a.b.c")', {"hub": hub}),
            'hub["a.b.c"]': ('hub["a.b.c"]', {"hub": hub}),
            "floor: cfg.a.b.c (attrs)": ("cfg.a.b.c", {"cfg": cfg}),
            "view.current.a.b.c": ("view.current.a.b.c", {"view": view}),
        }
        missing: list[Row] = []
        for label, setup, nrows in PEER_SETUPS:
            try:
                cases.update(setup(data))
            except Exception as exc:  # noqa: BLE001 - a broken peer is reported, not fatal
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:80]
                missing += [na_row(f"{label} ({i + 1}/{nrows})", reason) for i in range(nrows)]
        timed = time_statements(cases, number=number, rounds=rounds)
        medians = {name: median for name, (median, _) in timed.items()}
    finally:
        hub.close()

    dict_floor = medians['floor: d["a"]["b"]["c"]']
    attrs_floor = medians["floor: cfg.a.b.c (attrs)"]
    rows = [
        Row("empty loop (pass)", medians["empty loop (pass)"], note="loop overhead, in all rows"),
        Row('floor: d["a"]["b"]["c"]', dict_floor, "nested dict", 1.0),
        Row('flat dict d["a.b.c"]', medians['flat dict d["a.b.c"]'], "nested dict",
            medians['flat dict d["a.b.c"]'] / dict_floor, note="reference"),
        Row('hub.get("a.b.c")', medians['hub.get("a.b.c")'], "nested dict",
            medians['hub.get("a.b.c")'] / dict_floor, GET_TARGET),
        Row('hub["a.b.c"]', medians['hub["a.b.c"]'], "nested dict",
            medians['hub["a.b.c"]'] / dict_floor, note="reference"),
        Row("floor: cfg.a.b.c (attrs)", attrs_floor, "attrs chain", 1.0),
        Row("view.current.a.b.c", medians["view.current.a.b.c"], "attrs chain",
            medians["view.current.a.b.c"] / attrs_floor, VIEW_TARGET),
    ]
    peer_names = [name for name in cases if name.split(" ")[0] in {p[0] for p in PEER_SETUPS}]
    rows += [
        Row(name, medians[name], "nested dict", medians[name] / dict_floor, note="peer")
        for name in peer_names
    ]
    for row in rows:
        size = timed[row.name][1]
        if size != number:
            row.note = ", ".join(filter(None, [row.note, f"batches of {size}"]))
    return rows + missing


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    number, rounds = (1_000, 5) if args.quick else (10_000, 41)
    header("confhub read benchmark")
    print(f"{versions(['confhub', *PEERS])}; the default Hub([data]) (a dict: nothing cached)")
    print(
        f"median ns per read over {rounds} interleaved batches of {number} reads "
        f"(timeit loops, gc off){' -- QUICK RUN, numbers are not meaningful' if args.quick else ''}"
    )
    print()
    for n in SIZES:
        print_table(f"{n:,} keys", run_size(n, number=number, rounds=rounds))


if __name__ == "__main__":
    main()
