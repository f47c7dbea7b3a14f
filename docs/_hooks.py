"""mkdocs hook: the pages link figures that live with the results they show (``../results/site/screenshot.png``
from ``docs/``, which is right on GitHub); on the site each linked repository file is served at
``results/...`` and the link rewritten to it.  A link to a file that does not exist is left as it is,
and ``mkdocs build --strict`` fails on it."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(\.\./((?:results|benchmarks)/[^)\s#]+)\)")


def on_files(files, config):
    linked = set()
    for page in files.documentation_pages():
        linked.update(LINK.findall(Path(page.abs_src_path).read_text(encoding="utf-8")))
    for path in sorted(linked):
        if (ROOT / path).is_file() and files.get_file_from_path(path) is None:
            files.append(File(path, src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = "../" * page.file.src_uri.count("/")          # a page in a subfolder links one level further up
    return LINK.sub(lambda m: f"]({depth}{m[1]})" if files.get_file_from_path(m[1]) else m[0], markdown)
