"""fsl_app studio: `streamlit run app.py` (or `fsl-app ui`). Page config, the shared project picker, navigation."""

import streamlit as st

from pages import _shared  # the app's folder is on sys.path under `streamlit run` and AppTest

st.set_page_config(page_title="fsl_app studio", page_icon=":material/photo_library:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/photo_library:"),
    st.Page("pages/augment.py", title="Augment", icon=":material/auto_fix_high:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
    st.Page("pages/export.py", title="Export & try", icon=":material/download:"),
]
PICKER_KEY = "project-picker"


def project_sidebar() -> None:
    _shared.init_project_choice()
    names = _shared.projects()
    with st.sidebar:
        st.markdown("### Project")
        if names:
            # the widget has its own key: widget state does not survive a page switch, the plain key does
            st.session_state[PICKER_KEY] = st.session_state[_shared.PROJECT_KEY]
            st.selectbox("Current project", names, key=PICKER_KEY, label_visibility="collapsed",
                         on_change=lambda: _shared.select_project(st.session_state[PICKER_KEY]))
            _shared.remember_in_url(st.session_state[_shared.PROJECT_KEY])
        else:
            st.caption("No project yet: create one, or load the sample data on the Home page.")
        with st.expander("New project", expanded=not names):
            _shared.project_creator("sidebar-new-project")
        active = _shared.job_queue().active()
        if active:
            st.caption(f":material/hourglass_top: {len(active)} training job(s) queued or running")


page = st.navigation(PAGES)
project_sidebar()
page.run()
