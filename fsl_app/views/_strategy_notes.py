"""The Train page's notes under the strategy picker: what the chosen strategy does, and, for a strategy that learns
from unlabeled images, whether this run uses the project's unlabeled pool."""

from __future__ import annotations

import streamlit as st

from fsl_app.strategies import get_strategy_class

USE_POOL_KEY = "train-use-pool"


def strategy_notes(project, strategy: str) -> None:
    """The strategy's one-line summary; a pool-aware strategy adds the "Use the N unlabeled images" checkbox."""
    strategy_class = get_strategy_class(strategy)
    if strategy_class.summary:
        st.caption(strategy_class.summary)
    if not strategy_class.uses_unlabeled:
        return
    count = project.count_images(labeled=False)
    if not count:
        st.caption("It can learn from unlabeled images, and this project has none: add some on the Data page.")
        return
    st.checkbox(f"Use the {count} unlabeled image{'s' if count != 1 else ''}", value=True, key=USE_POOL_KEY,
                help="The pool shapes the classifier in every evaluation split and in the final fit; the run records "
                     "how many images it used. Untick to train on the labeled images alone and compare both runs.")


def use_pool() -> bool:
    """The checkbox's value as the Train button's callback reads it (ticked unless the user unticked it)."""
    return bool(st.session_state.get(USE_POOL_KEY, True))
