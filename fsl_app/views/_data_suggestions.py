"""The Data page's review sections: model suggestions for the unlabeled pool, near-duplicate pairs."""

import streamlit as st

from fsl_app import run_tables
from fsl_app.store import StoreError, suggest_for_project
from fsl_app.views import _data_edit, _shared

SUGGESTIONS_SHOWN = 24
MAX_SCORED = 2_000  # unlabeled images scored per visit: a 100,000-image pool would extract features of every one


def accept(project, image_id: int, label: str) -> None:
    try:
        project.set_labels([image_id], label, create_missing_class=True, actor="suggestion")
    except StoreError as error:
        _data_edit.tell_error(error)


def accept_confident(project, suggestions) -> None:
    threshold = st.session_state["suggest-threshold"]
    chosen = [s for s in suggestions if s.confidence >= threshold]
    for label in {s.label for s in chosen}:
        project.set_labels([s.image_id for s in chosen if s.label == label], label, create_missing_class=True,
                           actor="suggestion")
    _data_edit.tell(f"{len(chosen)} suggestion(s) accepted.")


def suggestions_section(project) -> None:
    n_unlabeled = project.count_images(labeled=False)
    if not n_unlabeled:
        return
    runs = run_tables.project_runs(project.path)
    st.subheader("Label the unlabeled pool with model suggestions")
    if not runs:
        st.caption("Train a model first: its suggestions for the unlabeled images appear here.")
        return
    run = _shared.run_picker("Suggestions from", runs, "suggest-run", prefer_best=True)
    if not st.toggle("Show suggestions (most uncertain first)", key="suggest-on"):
        return
    try:
        suggestions = suggest_for_project(project, _shared.fitted_strategy(run["run_dir"]), top=SUGGESTIONS_SHOWN,
                                          max_images=MAX_SCORED)
    except Exception as error:  # noqa: BLE001 - a run whose backbone is gone, a deleted image...
        _shared.show_error(error, prefix="No suggestions: ")
        return
    if n_unlabeled > MAX_SCORED:
        st.caption(f"Scored a random sample of {MAX_SCORED:,} of the {n_unlabeled:,} unlabeled images (scoring all "
                   "would extract features of every one); label some and a new sample is drawn.")
    threshold = st.slider("Accept every suggestion at least this confident", 0.5, 1.0, 0.9, 0.05,
                          key="suggest-threshold")
    st.button(f"Accept the {sum(s.confidence >= threshold for s in suggestions)} confident suggestion(s)",
              on_click=accept_confident, args=(project, suggestions))
    columns = st.columns(_data_edit.GRID_COLUMNS)
    for index, suggestion in enumerate(suggestions):
        with columns[index % _data_edit.GRID_COLUMNS]:
            st.image(str(project.thumbnail_path(suggestion.image_id)), width="stretch")
            st.caption(f"**{suggestion.label}** {suggestion.confidence:.0%} · margin {suggestion.margin:.2f}")
            st.button(f"Accept {suggestion.label}", key=f"accept-{suggestion.image_id}", on_click=accept,
                      args=(project, suggestion.image_id, suggestion.label))


def duplicates_section(project) -> None:
    pairs = project.near_duplicates()
    if not pairs:
        return
    with st.expander(f"{len(pairs)} near-duplicate pair(s): check them, delete copies you do not need"):
        for first, second, distance in pairs[:20]:
            left, middle, right = st.columns([2, 2, 3])
            left.image(str(project.thumbnail_path(first)), width=120)
            middle.image(str(project.thumbnail_path(second)), width=120)
            a, b = project.get_image(first), project.get_image(second)
            right.write(f"{a.source_name} ({a.label or 'unlabeled'}) vs {b.source_name} ({b.label or 'unlabeled'}), "
                        f"perceptual distance {distance}")
