"""The webcam on the Data page (add shots to a class) and the Export & try page (try the model on a shot).

``st.camera_input`` asks the browser for the camera only once the user turns the toggle on, so a page without a
camera, or one where permission is denied, works as before: the widget shows the browser's reason and returns None.
"""

from __future__ import annotations

import streamlit as st

from fsl_app import camera

UNLABELED = "(unlabeled)"


def camera_shot(key: str, label: str, *, toggle: str = "Use the webcam"):
    """The shot taken (an UploadedFile with ``.name`` and ``.getvalue()``) or None; nothing before the toggle."""
    if not st.toggle(toggle, key=f"{key}-on", help="Your browser asks for permission to use the camera."):
        return None
    round_ = st.session_state.get(f"{key}-round", 0)
    return st.camera_input(label, key=f"{key}-{round_}")


def clear_shot(key: str) -> None:
    """Empty the camera widget (a new key), so the same shot is not added twice on the next rerun."""
    st.session_state[f"{key}-round"] = st.session_state.get(f"{key}-round", 0) + 1


def add_from_camera(project) -> None:
    """Data page: each shot goes straight into the chosen class, reported like an upload."""
    with st.expander("Take photos with the webcam", icon=":material/photo_camera:"):
        targets = project.classes() + [UNLABELED]
        target = st.selectbox("Photos go to", targets, key="camera-target")
        shot = camera_shot("camera-data", "Take a photo")
        if shot is None:
            return
        label = None if target == UNLABELED else target
        report = camera.add_camera_shot(project, shot.getvalue(), label, upload_name=shot.name)
        st.session_state["import_report"] = {"target": label or "the unlabeled pool", "report": report}
        clear_shot("camera-data")
        st.rerun()
