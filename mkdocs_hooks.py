"""MkDocs build hooks: the pages that live outside ``docs/`` join the site.

The repository keeps each plugin's documentation beside its code (``plugins/*/docs/``) and the
changelog at the root, where readers of the repository find them. The site shows them too:
``on_files`` adds them under ``etcd/``, ``consul/`` and ``changelog.md``, and
``on_page_markdown`` turns the repository-relative links of the pages (``../plugins/...``,
``../confhub/hookspecs.py``) into links to those site pages, so ``mkdocs build --strict`` checks
them like any other link.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent

#: Site path -> repository file, for every page that lives outside docs/.
EXTERNAL = {
    "changelog.md": ROOT / "CHANGELOG.md",
    **{
        f"{p.parent.parent.name.removeprefix('confhub-')}/{p.name}": p
        for p in sorted(ROOT.glob("plugins/confhub-*/docs/*.md"))
    },
}

#: Repository-relative link targets (as written in docs/*.md) -> site pages.
_LINKS = [
    (re.compile(r"\]\(\.\./plugins/confhub-(\w+)/docs/([\w.-]+\.md)"), r"](\1/\2"),
    (re.compile(r"\]\(\.\./confhub/hookspecs\.py\)"), "](reference/hookspecs.md)"),
    (re.compile(r"\]\(\.\./CHANGELOG\.md"), "](changelog.md"),
]


def on_files(files: Files, config: Any) -> Files:
    for dest, source in EXTERNAL.items():
        files.append(File.generated(config, dest, abs_src_path=str(source)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri in EXTERNAL:
        return markdown
    for pattern, replacement in _LINKS:
        markdown = pattern.sub(replacement, markdown)
    return markdown
