"""Rendering helpers for untrusted text in the Streamlit UI."""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text: object) -> str:
    """Escape untrusted text (crawled titles, sources, customer messages) for Streamlit's markdown, so a
    document cannot inject links, images (browser-side fetches) or formatting into the analyst's page."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))
