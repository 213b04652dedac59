"""The Data page's "Review labels" panel: the labels a held-out model disagrees with, each with a one-click relabel
that goes through the store (logged in the label history, undoable)."""

import streamlit as st

from fsl_app import label_check, run_tables, training_job
from fsl_app.store import StoreError
from fsl_app.views import _data_edit, _shared

RESULT_KEY, KEPT_KEY = "label-check", "label-check-kept"
SHOWN = 24


def run_check(project, run: dict) -> None:
    """Refit the run's strategy with every image held out once and keep the ranking in the session."""
    st.session_state.pop(RESULT_KEY, None)
    st.session_state[KEPT_KEY] = set()
    with st.spinner("Refitting with every labeled image held out once…"):
        try:
            strategy, backbone = label_check.strategy_from_run(run["run_dir"], quick=True,
                                                               load=training_job.cached_backbone)
            check = label_check.check_labels(project, strategy=strategy, backbone=backbone)
        except Exception as error:  # noqa: BLE001 - a deleted backbone file, too few labels since the run...
            _shared.show_error(error, prefix="Labels not checked: ")
            return
    st.session_state[RESULT_KEY] = {"project": str(project.path), "run": run["name"], "check": check}


def relabel(project, issue: label_check.LabelIssue) -> None:
    try:
        project.set_labels([issue.image_id], issue.suggested_label, actor="label check")
        _data_edit.tell(f"{issue.file_name}: {issue.label} → {issue.suggested_label}. "
                        "“Undo the last relabel” brings the old label back.")
    except StoreError as error:
        _data_edit.tell_error(error)


def keep(image_id: int) -> None:
    st.session_state.setdefault(KEPT_KEY, set()).add(image_id)


def pending_issues(project, check: label_check.LabelCheck) -> list[label_check.LabelIssue]:
    """Images of the review queue still carrying the label that was checked and not marked as right."""
    current = project.labels_by_id()
    kept = st.session_state.get(KEPT_KEY, set())
    return [issue for issue in check.review_queue if current.get(issue.image_id) == issue.label
            and issue.image_id not in kept]


def issue_card(project, issue: label_check.LabelIssue) -> None:
    st.image(str(project.thumbnail_path(issue.image_id)), width="stretch")
    verdict = "likely wrong" if issue.flagged else "worth a look"
    st.caption(f"{issue.file_name[:22]} · labeled **{issue.label}**, looks like **{issue.suggested_label}** "
               f"({verdict}, suspicion {issue.score:.2f})")
    st.button(f"Relabel as {issue.suggested_label}", key=f"relabel-{issue.image_id}", on_click=relabel,
              args=(project, issue), icon=":material/edit:")
    st.button("Keep", key=f"keep-{issue.image_id}", on_click=keep, args=(issue.image_id,))


def review_queue(project) -> None:
    shown = st.session_state.get(RESULT_KEY)
    if not shown or shown["project"] != str(project.path):
        return
    check = shown["check"]
    pending = pending_issues(project, check)
    st.caption(f"{len(check.flagged)} of {len(check.issues)} labels look wrong to {check.strategy} and "
               f"{len(check.review_queue) - len(check.flagged)} more are worth a look ({check.protocol}: each image "
               f"held out once). {len(pending)} left to review, most suspicious first. With a few images per class "
               "the held-out model is often wrong itself: these are images to look at, not verdicts.")
    if check.unchecked:
        st.caption(f"Not checked (the only image of its class): {', '.join(check.unchecked)}")
    if not pending:
        st.success("Nothing left to review: every suspicious label was changed or kept.", icon=":material/check:")
    columns = st.columns(_data_edit.GRID_COLUMNS)
    for index, issue in enumerate(pending[:SHOWN]):
        with columns[index % _data_edit.GRID_COLUMNS]:
            issue_card(project, issue)
    st.button("Undo the last relabel", key="label-check-undo", on_click=_data_edit.undo, args=(project,),
              icon=":material/undo:")


def review_labels_section(project) -> None:
    st.subheader("Review labels: which ones look wrong?")
    problem = label_check.check_problem(project.class_counts())
    if problem:
        st.info(problem, icon=":material/info:")
        return
    runs = run_tables.project_runs(project.path)
    if not runs:
        st.caption("Train a model first: the check refits its strategy with every image held out once and lists "
                   "the images whose label the held-out model disagrees with.")
        return
    run = _shared.run_picker("Check with the strategy and backbone of", runs, "check-run", prefer_best=True)
    if st.button("Check labels", key="check-labels", icon=":material/fact_check:"):
        run_check(project, run)
    review_queue(project)
