"""The studio's pages in one list: navigation, the Home tour and every ``page_link`` / ``switch_page`` use it.

Paths are absolute, so the pages resolve the same whether the entry script is ``fsl_app/app.py`` (installed
package, ``fsl-app ui``) or the top-level ``app.py`` launcher of a source checkout. A page's URL is its file name
(``/data``, ``/train``), the Home page's is ``/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

VIEWS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class View:
    file: str
    title: str
    icon: str
    tour: str = ""  # what the page does, in the Home tour (empty: not in the tour)


HOME = View("home.py", "Home", ":material/home:")
DATA = View("data.py", "Data", ":material/photo_library:",
            "drop a few images per class (or a zip), fix labels, accept model suggestions")
AUGMENT = View("augment.py", "Augment", ":material/auto_fix_high:", "preview and save train-time augmentation")
TRAIN = View("train.py", "Train", ":material/model_training:",
             "pick a backbone and a strategy, watch the curves live, cancel any time")
COMPARE = View("compare.py", "Compare", ":material/leaderboard:",
               "every run side by side, confusion matrices, mistakes, an embedding map")
EXPORT = View("export.py", "Export & try", ":material/download:", "try a new image, download the model")
VIEWS = (HOME, DATA, AUGMENT, TRAIN, COMPARE, EXPORT)


def page(view: View) -> st.Page:
    """The ``st.Page`` of a view (for ``st.navigation``, ``st.page_link`` and ``st.switch_page``)."""
    return st.Page(VIEWS_DIR / view.file, title=view.title, icon=view.icon, default=view is HOME)


def pages() -> list[st.Page]:
    return [page(view) for view in VIEWS]


def link(view: View, label: str | None = None) -> None:
    """A link to a view, with its icon."""
    st.page_link(page(view), label=label or view.title, icon=view.icon)
