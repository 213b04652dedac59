"""The Data page's "What to label first" panel: the unlabeled images whose labels should teach the model the most,
each with why it was picked and a label box that goes through the store (logged in the label history, undoable)."""

import streamlit as st

from fsl_app import label_first, run_tables, training_job
from fsl_app.store import StoreError
from fsl_app.views import _data_edit, _shared

RESULT_KEY = "label-first"
NO_RUN = "no run: a linear probe on the labeled images"


def pick_images(project, budget: int, method: str, run_dir: str | None) -> None:
    st.session_state.pop(RESULT_KEY, None)
    with st.spinner("Extracting features of the unlabeled pool and picking…"):
        try:
            result = label_first.suggest_first(project, budget=budget, method=method, run_dir=run_dir,
                                               load=training_job.cached_backbone)
        except Exception as error:  # noqa: BLE001 - too little data, a backbone gone from this machine...
            _shared.show_error(error, prefix="No suggestions: ")
            return
    st.session_state[RESULT_KEY] = {"project": str(project.path), "result": result}


def assign(project, pick: label_first.Pick) -> None:
    label = (st.session_state.get(f"first-label-{pick.image_id}") or "").strip()
    if not label:
        _data_edit.tell_error("Choose or type a class for the image first.")
        return
    try:
        project.set_labels([pick.image_id], label, create_missing_class=True, actor="label first")
        _data_edit.tell(f"{pick.file_name} labeled {label}. “Undo last label change” brings it back to the pool.")
    except StoreError as error:
        _data_edit.tell_error(error)


def pick_card(project, pick: label_first.Pick, classes: list[str]) -> None:
    st.image(str(project.thumbnail_path(pick.image_id)), width="stretch")
    st.caption(f"{pick.file_name[:22]} · {pick.reason}")
    index = classes.index(pick.suggested_label) if pick.suggested_label in classes else None
    st.selectbox("Class", classes, index=index, key=f"first-label-{pick.image_id}", accept_new_options=True,
                 placeholder="Class (or type a new one)", label_visibility="collapsed")
    st.button("Label", key=f"first-assign-{pick.image_id}", on_click=assign, args=(project, pick),
              icon=":material/label:")


def show_picks(project) -> None:
    shown = st.session_state.get(RESULT_KEY)
    if not shown or shown["project"] != str(project.path):
        return
    result = shown["result"]
    unlabeled = {image.id for image in project.images(labeled=False)}
    pending = [pick for pick in result.picks if pick.image_id in unlabeled]
    source = f" from {result.model}" if result.model else " (no model needed)"
    st.caption(f"{len(result.picks)} picks by **{result.method}**{source}, on {result.backbone} features; "
               f"{len(pending)} left to label, in this order. {result.note}")
    if not pending:
        st.success("Every pick is labeled: train again, then ask for the next ones.", icon=":material/check:")
        return
    classes = project.classes()
    columns = st.columns(_data_edit.GRID_COLUMNS)
    for index, pick in enumerate(pending):
        with columns[index % _data_edit.GRID_COLUMNS]:
            pick_card(project, pick, classes)


def label_first_section(project) -> None:
    st.subheader("What to label first")
    counts = project.class_counts()
    n_pool = project.count_images(labeled=False)
    problem = label_first.first_problem(n_pool, counts, "auto")
    if problem:
        st.info(problem, icon=":material/info:")
        return
    st.caption("Typical and diverse images (TypiClust: the most typical image of each cluster of the features) "
               "up to 10 labeled per class, where they measured better than the model's least sure images; after "
               "that, the images the model is least sure about, spread out and balanced over classes.")
    left, middle, right = st.columns([1, 2, 2])
    budget = left.number_input("How many", 1, 48, min(n_pool, max(5, len(counts)), 48), key="first-budget")
    method = middle.selectbox("Pick", label_first.METHODS, format_func=label_first.METHOD_LABELS.get,
                              key="first-method")
    runs = run_tables.project_runs(project.path)
    run_dir = None
    if runs and method == "margin":
        with right:
            names = [NO_RUN] + [run["name"] for run in runs]
            by_name = {run["name"]: run for run in runs}
            chosen = st.selectbox("Model", names, index=1, key="first-run",
                                  format_func=lambda n: n if n == NO_RUN else run_tables.run_label(by_name[n]))
            run_dir = None if chosen == NO_RUN else by_name[chosen]["run_dir"]
    method_problem = label_first.first_problem(n_pool, counts, method, has_run=run_dir is not None)
    if method_problem:
        st.info(method_problem, icon=":material/info:")
        return
    if st.button("Suggest images to label", key="first-pick", icon=":material/ads_click:"):
        pick_images(project, int(budget), method, run_dir)
    show_picks(project)
