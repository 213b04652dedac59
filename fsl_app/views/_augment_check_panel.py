"""The Augment page's check in embedding space, and the one-line warning the Train page repeats.

The check embeds augmented copies with the frozen backbone (a few seconds), so it runs on a click; its result is
cached per (labeled images, pipeline, backbone) and saved with the project, so the Train page can warn about a
harmful transform of the saved pipeline without running anything.
"""

import hashlib
import json

import streamlit as st

from fsl_app import augment, augment_check, run_tables
from fsl_app.views import _shared

CHECKED_KEY = "augcheck-checked-state"  # the state the user asked to check


def check_state(project, pipeline: dict) -> str:
    """A digest of what the check depends on: labeled images and labels, the pipeline, the latest run's backbone."""
    digest = hashlib.sha256(str(project.path).encode())
    for label, sha in sorted((image.label, image.sha256) for image in project.images(labeled=True)):
        digest.update(f"{label}|{sha}".encode())
    digest.update(json.dumps(pipeline, sort_keys=True).encode())
    runs = run_tables.project_runs(project.path)
    backbone = (runs[0]["config"].get("backbone") or {}) if runs else {}
    digest.update(f"{backbone.get('name')}|{backbone.get('weights')}".encode())
    return digest.hexdigest()


@st.cache_data(max_entries=8, show_spinner=False)
def cached_check(state: str, _project, _pipeline: dict) -> augment_check.AugmentCheck:
    """The check; ``state`` (:func:`check_state`) is the cache key, project and pipeline are not hashed."""
    return augment_check.check_project_augment(_project, _pipeline)


def check_section(project, pipeline: dict) -> None:
    st.subheader("Check in embedding space")
    problem = augment_check.check_problem(project.class_counts())
    if problem:
        st.info(problem, icon=":material/info:")
        return
    state = check_state(project, pipeline)
    if st.button("Check in embedding space", key="augcheck-button", icon=":material/troubleshoot:"):
        st.session_state[CHECKED_KEY] = state
    if st.session_state.get(CHECKED_KEY) != state:
        st.caption("Embeds augmented copies of your labeled images with the frozen backbone and shows, per "
                   "transform, how far they move from their class and how often they land nearer another class "
                   "(a flip that turns a 6 into a 9 shows up here). Takes a few seconds.")
        return
    with st.spinner("Embedding augmented copies…"):
        try:
            check = cached_check(state, project, pipeline)
            augment_check.save_check(project.path, pipeline, check)
        except Exception as error:  # noqa: BLE001 - a backbone that cannot load, an unreadable image...
            _shared.show_error(error, prefix="No augmentation check: ")
            return
    show_check(check)


def show_check(check: augment_check.AugmentCheck) -> None:
    if not check.applicable:
        st.info(check.message, icon=":material/info:")
        return
    warning = check.warning()
    if warning:
        st.warning(warning + " Check again after changing the pipeline.", icon=":material/warning:")
    else:
        st.success("No transform moves copies into another class.", icon=":material/check:")
    if check.weak_embedding:
        st.info(f"The backbone barely separates your classes ({check.baseline_error:.0%} of the unaugmented images "
                "are nearer another class): this check can miss a harmful transform. Trust the Compare page more.",
                icon=":material/info:")
    st.dataframe([{"transform": row.name, "p": row.probability, "copies": row.n_copies, "shift": row.shift,
                   "margin drop": row.margin_drop, "toward another class": row.approach,
                   "class flips": row.flip_rate, "verdict": row.verdict}
                  for row in check.rows], hide_index=True, key="augcheck-table",
                 column_config={"shift": st.column_config.NumberColumn(format="%.2f"),
                                "margin drop": st.column_config.NumberColumn(format="%.2f"),
                                "toward another class": st.column_config.NumberColumn(format="%.2f"),
                                "class flips": st.column_config.NumberColumn(format="percent")})
    st.caption(f"{check.n_images} labeled images of {check.n_classes} classes, each transform applied alone and "
               f"always (p=1), on {check.backbone} features ({check.backbone_origin}), {check.seconds:.1f} s. "
               "shift: distance to the class prototype over the class's own spread (1 = a typical image); margin "
               "drop: class margin the copies lose, in standard deviations of your images' margins; toward another "
               "class: the part of it from nearing another class. Harmful: margin drop from "
               f"{augment_check.MARGIN_DROP_WARNING:g}, toward another class from {augment_check.APPROACH_WARNING:g} "
               f"and at least {augment_check.FLIP_RATE_WARNING:.0%} flips; "
               f"{check.baseline_error:.0%} of the unaugmented images are already nearer another class.")


def train_warning(project) -> None:
    """Train page: the saved pipeline's warning, when it was checked and found harmful."""
    pipeline = augment.load_project_augment(project.path).resolved_pipeline()
    warning = augment_check.saved_warning(project.path, pipeline)
    if warning:
        st.warning(f"Augmentation (fine-tuning): {warning}", icon=":material/warning:")
