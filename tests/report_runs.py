"""Small trained runs for the report tests (test_report.py, test_report_browser.py), and a parser of the page."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from conftest import make_image_folder


def quadrant_run(root: Path, report: bool = True):
    """A 4-class seed CNN run on 16-pixel quadrant images, with light augmentation, 3 epochs, `--report`."""
    import cnnlab

    data = make_image_folder(root / "quad", classes=("north", "east", "south", "west"), per_class=30, size=16)
    return cnnlab.fit(str(data), model="seed_cnn", epochs=3, augment="light", verbose=0, out=str(root / "run"),
                      report=report)


class PageParser(HTMLParser):
    """The report's links, images, confusion-matrix cells and panels, with their data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.cells: list[dict[str, str]] = []
        self.panels: list[dict] = []
        self.section_ids: list[str] = []
        self.urls: list[str] = []
        self._figure: dict | None = None
        self._caption = False

    def handle_starttag(self, tag: str, attrs) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "section":
            self.section_ids.append(a.get("id", ""))
        elif tag == "img":
            self.images.append(a)
        elif tag == "a" and "cell" in a.get("class", "").split():
            self.cells.append(a)
        elif tag == "div" and "cell-panel" in a.get("class", "").split():
            self.panels.append({**a, "figures": []})
        elif tag == "figure" and "thumb" in a.get("class", "").split() and self.panels:
            self._figure = {**a, "caption": ""}
            self.panels[-1]["figures"].append(self._figure)
        elif tag == "figcaption":
            self._caption = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._caption = False
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data: str) -> None:
        if self._caption and self._figure is not None:
            self._figure["caption"] += data


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def caption_probability(caption: str) -> float:
    return float(re.search(r"p=([0-9.]+)", caption).group(1))
