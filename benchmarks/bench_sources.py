"""The issue-13 sources: loading a ``.env`` file and a secrets directory.

1. A 2,000-line ``.env`` (quotes, comments, ``${VAR}``): ``Hub([dotenv:...]).start()`` and the
   parser alone, against the floor of python-dotenv's ``dotenv_values`` on the same file
   (the library users would otherwise call).
2. A 200-file secrets directory: the backend's ``load()`` and ``Hub([secrets:...]).start()``,
   against the floor of a plain loop that lists the directory and reads every file. A hub's
   fixed cost (plugin manager, threads: ``Hub([{...}])`` started and closed) is shown beside.

The hubs run the default configuration (cache on, in the default cache directory);
``.env`` files, secrets directories and defaults are not cacheable, so the cache plays no
part in these rows and they have no ``cache_dir=None`` twin.

Run: ``.venv/bin/python -m benchmarks.bench_sources [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import dotenv as python_dotenv

import confhub
from confhub._backends.dotenv import dotenv_values
from confhub._backends.secrets import SecretsBackend

from ._table import Row, header, parse_args, print_table, time_calls, versions

#: The hub adds the layer, the merge and the snapshot to the parse: within 3x of the floor.
DOTENV_TARGET = 3.0
PARSE_TARGET = 2.0
SECRETS_TARGET = 1.5


def make_dotenv(n: int) -> str:
    lines = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            lines.append(f"# section {i}")
        elif kind == 1:
            lines.append(f"export APP_S{i // 50}__K{i}=value-{i}  # note")
        elif kind == 2:
            lines.append(f"APP_S{i // 50}__K{i}='single {i}'")
        elif kind == 3:
            lines.append(f'APP_S{i // 50}__K{i}="double\\t{i}\\n"')
        else:
            lines.append(f"APP_S{i // 50}__K{i}=${{APP_S{(i - 3) // 50}__K{i - 3}}}/x")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args(__doc__ or "")
    repeat = 5 if args.quick else 40
    header("bench_sources: .env files and secrets directories")
    print(versions(["confhub", "python-dotenv"]))
    print()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env_file = root / ".env"
        env_file.write_text(make_dotenv(2000))
        text = env_file.read_text()
        secrets = root / "secrets"
        secrets.mkdir()
        for i in range(200):
            (secrets / f"app__key{i}").write_text(f"secret-value-{i}\n")

        def floor_dotenv() -> object:
            return python_dotenv.dotenv_values(env_file)

        def parse_only() -> object:
            return dotenv_values(text, where=".env")

        def hub_dotenv() -> object:
            with confhub.Hub([f"dotenv:{env_file}?prefix=APP_&watch=false"], autoload=False) as hub:
                return hub.generation

        def floor_secrets() -> object:
            out = {}
            for entry in os.scandir(secrets):
                with open(entry.path, encoding="utf-8") as fh:
                    out[entry.name] = fh.read().rstrip("\n")
            return out

        backend = SecretsBackend(confhub.SourceSpec.parse(f"secrets:{secrets}"))

        def empty_hub() -> object:
            with confhub.Hub([{"a": 1}], autoload=False) as hub:
                return hub.generation

        def hub_secrets() -> object:
            with confhub.Hub([f"secrets:{secrets}?watch=false"], autoload=False) as hub:
                return hub.generation

        med = {
            name: statistics.median(time_calls(fn, repeat=repeat, warmup=2))
            for name, fn in [
                ("floor_dotenv", floor_dotenv),
                ("parse", parse_only),
                ("hub_dotenv", hub_dotenv),
                ("floor_secrets", floor_secrets),
                ("load_secrets", backend.load),
                ("hub_secrets", hub_secrets),
                ("empty_hub", empty_hub),
            ]
        }
    rows = [
        Row("python-dotenv dotenv_values, 2,000 lines", med["floor_dotenv"], note="the floor"),
        Row(
            "confhub's .env parser alone",
            med["parse"],
            "python-dotenv",
            med["parse"] / med["floor_dotenv"],
            PARSE_TARGET,
        ),
        Row(
            "Hub([dotenv:...]).start() + close",
            med["hub_dotenv"],
            "python-dotenv",
            med["hub_dotenv"] / med["floor_dotenv"],
            DOTENV_TARGET,
        ),
    ]
    print_table("Loading a .env file", rows)
    rows = [
        Row("scandir + read 200 files", med["floor_secrets"], note="the floor"),
        Row(
            "secrets backend load()",
            med["load_secrets"],
            "scandir + read",
            med["load_secrets"] / med["floor_secrets"],
            SECRETS_TARGET,
        ),
        Row(
            "Hub([secrets:...]).start() + close",
            med["hub_secrets"],
            "scandir + read",
            med["hub_secrets"] / med["floor_secrets"],
            note=f"a hub's fixed cost: {med['empty_hub'] / 1e6:.1f} ms",
        ),
    ]
    print_table("Loading a secrets directory", rows)


if __name__ == "__main__":
    main()
