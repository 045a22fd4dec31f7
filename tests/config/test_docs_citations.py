"""The docs a clone has are the docs the code cites: every ``docs/methods.md §X`` in the code,
configs and docs names a section of docs/methods.md (and so does every bare ``§X`` inside that
page), and no product file sends users to the design notes or paper texts outside the repository
(the Detectron2 fixtures the tests read may stay there; the docs say so)."""
from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRODUCT = ("bcd", "tools", "configs", "projects", "docs", "datasets")
CITE = re.compile(r"methods\.md`?\]?(?:\([^)]*\))?\s*§(\d+(?:\.\d+)*)")


def _sections():
    text = open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8").read()
    heads = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))
    anchors = set(re.findall(r'<a id="sec-(\d+(?:\.\d+)?)"></a>', text))
    assert heads == anchors, "every numbered section has its anchor"
    return heads, text


def _product_files():
    yield os.path.join(ROOT, "README.md")
    for top in PRODUCT:
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith((".py", ".md", ".yaml", ".txt")):
                    yield os.path.join(d, f)


def test_every_cited_methods_section_exists():
    sections, text = _sections()
    assert {"1.2", "2.9", "3.2", "4.4", "4.6", "5.8"} <= sections
    bad, n = [], 0
    for path in _product_files():
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            for sec in CITE.findall(line):
                n += 1
                if sec not in sections:
                    bad.append(f"{os.path.relpath(path, ROOT)}:{i}: §{sec}")
    for sec in re.findall(r"§(\d+(?:\.\d+)?)", text):  # the page's own cross-references
        n += 1
        if sec not in sections:
            bad.append(f"docs/methods.md: §{sec}")
    assert n > 40 and bad == [], "citations of sections that docs/methods.md lacks:\n" + "\n".join(bad)


def test_no_product_file_points_outside_the_repository():
    bad = []
    for path in _product_files():
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            if re.search(r"shared/(design|papers)|\bMETHODS(\.md)?\b|\bEVIDENCE(\.md)?\b", line):
                bad.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()[:100]}")
    assert bad == [], "\n".join(bad)


def test_the_scanner_reads_the_citation_forms():
    assert CITE.findall("docs/methods.md §4.6 item 5; `docs/methods.md` §3, "
                        "[`docs/methods.md` §2](../../docs/methods.md#sec-2)") == ["4.6", "3", "2"]
