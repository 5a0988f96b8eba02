"""Accessibility checks on rendered HTML, with the standard library's parser."""

from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser

_UNLABELLED_TYPES = {"hidden", "submit", "button", "reset", "image"}


class _Controls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.label_targets: set[str] = set()
        self.described_by: list[str] = []
        self.controls: list[tuple[dict[str, str | None], bool]] = []  # (attrs, inside a label)
        self._open_labels = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.append(attributes["id"])
        self.described_by += (attributes.get("aria-describedby") or "").split()
        if tag == "label":
            self._open_labels += 1
            if attributes.get("for"):
                self.label_targets.add(attributes["for"])
        elif tag in ("input", "select", "textarea") and (
            attributes.get("type") not in _UNLABELLED_TYPES
        ):
            self.controls.append((attributes, self._open_labels > 0))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._open_labels = max(0, self._open_labels - 1)


def _parse(html: str) -> _Controls:
    parser = _Controls()
    parser.feed(html)
    return parser


def duplicate_ids(html: str) -> list[str]:
    """Ids used more than once: a ``<label for>`` reaches only the first."""
    return [name for name, count in Counter(_parse(html).ids).items() if count > 1]


def unlabelled_controls(html: str) -> list[str]:
    """Names of the form controls with no label (none around them, none pointing at their
    id, no aria-label): a screen reader announces them as a bare "edit text" or "button"."""
    parser = _parse(html)
    return [
        str(attrs.get("name") or attrs.get("id"))
        for attrs, inside_label in parser.controls
        if not inside_label
        and attrs.get("id") not in parser.label_targets
        and not attrs.get("aria-label")
    ]


def dangling_descriptions(html: str) -> list[str]:
    """``aria-describedby`` ids that name no element: the help text is never read out."""
    parser = _parse(html)
    return [name for name in parser.described_by if name not in parser.ids]
