"""Home: what the studio does, pick or create a project, or load the sample data and train in one click."""

import streamlit as st

from fsl_app import run_tables, sample_data, training_job
from fsl_app.views import _nav, _shared


def start_sample() -> None:
    """on_click: build the sample project, queue its first training runs, then open the Train page."""
    try:
        name, _ = training_job.start_sample(_shared.job_queue())
    except Exception as error:  # noqa: BLE001 - shown to the user in words
        st.session_state["sample_error"] = _shared.error_text(error)
        return
    _shared.select_project(name)
    st.session_state["go_to_train"] = True


def sample_card() -> None:
    with st.container(border=True):
        st.subheader(":material/rocket_launch: Try it with sample data")
        classes, strategies = len(sample_data.SAMPLE_CLASSES), training_job.SAMPLE_STRATEGIES
        st.write(f"Loads {classes * sample_data.LABELED_PER_CLASS} labeled handwritten digits ({classes} classes "
                 f"of {sample_data.LABELED_PER_CLASS}) and {classes * sample_data.UNLABELED_PER_CLASS} unlabeled "
                 f"ones, then trains {len(strategies)} strategies ({', '.join(strategies)}) on a pretrained "
                 "backbone: models to compare within a minute, no internet needed.")
        st.button("Load the sample and train", type="primary", on_click=start_sample, key="sample-button")
        if st.session_state.get("sample_error"):
            st.error(st.session_state.pop("sample_error"))


def create_card() -> None:
    with st.container(border=True):
        st.subheader(":material/create_new_folder: Start a project with your images")
        st.write("A project keeps your images, labels, augmentation and training runs together on this computer.")
        _shared.project_creator("home-new-project", label="Project name")


def overview(project) -> None:
    with st.spinner("Reading the project: after an import or a delete its near duplicates are searched again "
                    "(seconds for 100,000 images)…"):
        stats = project.stats()
    runs = run_tables.project_runs(project.path)
    best = run_tables.best_run(runs)
    st.subheader(f"Project: {project.name}")
    columns = st.columns([2, 2, 2, 2, 3])
    columns[0].metric("Images", stats.n_images)
    columns[1].metric("Labeled", stats.n_labeled)
    columns[2].metric("Classes", len(stats.class_counts))
    columns[3].metric("Runs", len(runs))
    columns[4].metric("Best accuracy", run_tables.accuracy_metric(best["metrics"])[0] if best else "–",
                      help=run_tables.run_label(best) if best else "no finished run yet")
    for warning in stats.warnings:
        st.warning(warning, icon=":material/warning:")


def tour() -> None:
    st.subheader("A one-minute tour")
    for view in _nav.VIEWS:
        if view.tour:
            left, right = st.columns([1, 4])
            with left:
                _nav.link(view)
            right.write(view.tour)


if st.session_state.pop("go_to_train", False):
    st.switch_page(_nav.page(_nav.TRAIN))

st.title("Few-shot image classification studio")
st.caption("Label a handful of images per class, train on your CPU or GPU while the curves update, compare "
           "strategies honestly and export a model that runs without this app.")
project = _shared.current_project()
if project is not None:
    overview(project)
left, right = st.columns(2)
with left:
    sample_card()
with right:
    create_card()
tour()
