"""fsl_app studio: `fsl-app ui` (or `streamlit run fsl_app/app.py`). Page config, the shared project picker,
navigation over the views in ``fsl_app/views/``."""

import streamlit as st

from fsl_app.views import _auth, _nav, _shared

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


st.set_page_config(page_title="fsl_app studio", page_icon=":material/photo_library:", layout="wide")
_auth.require_login()
page = st.navigation(_nav.pages())
project_sidebar()
page.run()
