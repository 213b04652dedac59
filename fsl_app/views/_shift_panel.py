"""The Data page's domain-shift panel: does the unlabeled pool look like the labeled images?

The check extracts features of every image the first time (slow), so it runs on a button click and its result is
cached per project state: the sha256 of every labeled and unlabeled image and the latest run's backbone.
"""

import hashlib

import streamlit as st

from fsl_app import run_tables, shift_check
from fsl_app.views import _data_edit, _shared

CHECKED_KEY = "shift-checked-state"  # the project state the user asked to check
FURTHEST_SHOWN = 2 * _data_edit.GRID_COLUMNS
MAX_POOL = 2_000  # pool images tested: a bigger pool is sampled (features of every image would take too long)


def project_state(project) -> str:
    """A digest of what the check depends on: which images are labeled and unlabeled, and the latest run's
    backbone (from aggregate queries: a 100,000-image project hashes in milliseconds)."""
    digest = hashlib.sha256(str(project.path).encode())
    digest.update(project.sides_fingerprint().encode())
    runs = run_tables.project_runs(project.path)
    backbone = (runs[0]["config"].get("backbone") or {}) if runs else {}
    digest.update(f"{backbone.get('name')}|{backbone.get('weights')}".encode())
    return digest.hexdigest()


@st.cache_data(max_entries=8, show_spinner=False)
def cached_check(state: str, _project) -> shift_check.ShiftCheck:
    """The project's shift check; ``state`` (:func:`project_state`) is the cache key, the project is not hashed."""
    return shift_check.check_project_shift(_project, n_furthest=FURTHEST_SHOWN, max_pool=MAX_POOL)


def shift_section(project) -> None:
    st.subheader("Domain shift")
    n_labeled, n_unlabeled = project.count_images(labeled=True), project.count_images(labeled=False)
    problem = shift_check.missing_images_message(n_labeled, n_unlabeled)
    if problem:
        st.info(problem, icon=":material/info:")
        return
    state = project_state(project)
    if st.button("Check the pool against the labeled images", key="shift-check", icon=":material/compare:"):
        st.session_state[CHECKED_KEY] = state
    if st.session_state.get(CHECKED_KEY) != state:
        st.caption("A two-sample test on the backbone's features tells whether the unlabeled images look like the "
                   "labeled ones; a model trained on the labeled images may do worse where they differ. The first "
                   "check extracts the features of every image and can take a while.")
        return
    with st.spinner("Extracting features and testing the pool against the labeled images…"):
        try:
            check = cached_check(state, project)
        except Exception as error:  # noqa: BLE001 - a backbone that cannot load, an unreadable image...
            _shared.show_error(error, prefix="No shift check: ")
            return
    show_check(project, check)


def show_check(project, check: shift_check.ShiftCheck) -> None:
    if not check.applicable:
        st.info(check.message, icon=":material/info:")
        return
    if check.shifted:
        st.warning(f"The pool differs from the labeled images: {check.message}. A model trained on the labeled "
                   "images may do worse on it: label some of the images below.", icon=":material/warning:")
    else:
        st.success(f"The pool looks like the labeled images: {check.message}.", icon=":material/check:")
    n_pool = project.count_images(labeled=False)
    if check.n_target < n_pool:
        st.caption(f"Tested on a random sample of {check.n_target:,} of the {n_pool:,} unlabeled images.")
    st.caption(f"{check.n_target} unlabeled vs {check.n_labeled} labeled images, on {check.backbone} features "
               f"({check.backbone_origin}). Furthest pool images first; score = distance to the nearest labeled "
               "images over the labeled images' own spacing (about 1: as close as they are to each other).")
    columns = st.columns(_data_edit.GRID_COLUMNS)
    for index, image in enumerate(check.furthest):
        with columns[index % _data_edit.GRID_COLUMNS]:
            st.image(str(project.thumbnail_path(image.image_id)), width="stretch")
            st.caption(f"{image.name} · {image.score:.2f}")
