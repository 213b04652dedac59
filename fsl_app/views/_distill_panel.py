"""The Export page's Distil panel: queue a distillation of the chosen run into a smaller student, watch it live."""

import streamlit as st

from fsl_app import backbones, distill_job
from fsl_app.views import _jobs_panel, _shared

INPUT_SIZES = (None, 224, 192, 160, 128, 96, 64)  # None: the student backbone's own


def project_classes(project) -> tuple[list[str], int]:
    """(labeled classes, sorted; unlabeled image count) of the project, from two aggregate queries."""
    return sorted(name for name, count in project.class_counts().items() if count), project.count_images(labeled=False)


def student_backbone() -> str:
    offered = backbones.offered_backbones()
    preferred = "tf_efficientnet_lite0"
    if st.session_state.get("distill-student") not in offered:
        st.session_state["distill-student"] = offered[0] if backbones.offering_test_backbones() else preferred
    return st.selectbox("Student backbone", offered, key="distill-student",
                        help="a smaller network (or a lower input size) that learns to answer like the teacher")


def request_from_state(project, run: dict) -> distill_job.DistillRequest:
    name = st.session_state["distill-student"]
    weights = "random" if name in backbones.TEST_BACKBONES else "auto"
    return distill_job.DistillRequest(str(project.path), run["run_dir"], name, weights,
                                      st.session_state["distill-size"], int(st.session_state["distill-epochs"]),
                                      float(st.session_state["distill-temperature"]),
                                      float(st.session_state["distill-alpha"]), bool(st.session_state["distill-pool"]))


def submit(project, run: dict) -> None:
    request = request_from_state(project, run)
    distill_job.submit_distillation(_shared.job_queue(), request, owner=project.name)


def distill_form(project, run: dict) -> None:
    classes, pool = project_classes(project)
    left, right = st.columns(2)
    with left:
        name = student_backbone()
        size = st.selectbox("Student input size", INPUT_SIZES, key="distill-size",
                            format_func=lambda s: "the backbone's own" if s is None else f"{s} × {s} px")
    with right:
        st.number_input("Epochs", 1, 200, 10, key="distill-epochs")
        st.number_input("Temperature", 1.0, 20.0, 4.0, step=0.5, key="distill-temperature",
                        help="softens the teacher's probabilities so the student also learns which wrong classes "
                             "are close")
    st.slider("Weight of the teacher (alpha)", 0.0, 1.0, 0.7, 0.05, key="distill-alpha",
              help="1: learn only from the teacher; 0: only from the labels")
    st.checkbox(f"Learn from the {pool} unlabeled images too (the teacher labels them)", value=True,
                key="distill-pool", disabled=not pool)
    check = distill_job.preview(run["run_dir"], classes, name, size)
    if check.error:
        st.error(check.error)
    for warning in check.warnings:
        st.warning(warning, icon=":material/warning:")
    if check.teacher_params_m is not None and check.student_params_m is not None:
        st.caption(f"teacher backbone {check.teacher_params_m:g} M parameters at {check.teacher_input} px · student "
                   f"{check.student_params_m:g} M at {check.student_input} px")
    st.button("Distil", key="distill-submit", type="primary", on_click=submit, args=(project, run),
              disabled=check.error is not None, icon=":material/compress:")


def distill_panel(project, run: dict) -> None:
    st.subheader("Distil into a smaller model")
    st.caption("The run above is the teacher. The student is a new run: evaluated like the others, listed on "
               "Compare and exported here.")
    with st.container(border=True):
        distill_form(project, run)
    _jobs_panel.jobs_panel(project.name)
