"""Streamlit pieces every page shares: the current project, the process-wide job queue, cached models, errors.

Heavy or process-wide objects live in ``st.cache_resource``: the job queue (so a running training survives a page
reload and every tab sees it), open projects and fitted strategies. Session state holds only small values.
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from fsl_app import jobs, studio
from fsl_app.store import StoreError, create_project, list_projects, open_project, workspace_home

PROJECT_KEY = "project"
HOME_PAGE = "pages/home.py"
DATA_PAGE = "pages/data.py"
TRAIN_PAGE = "pages/train.py"
COMPARE_PAGE = "pages/compare.py"
EXPORT_PAGE = "pages/export.py"


def use_navigation() -> None:
    """First line of every page: make sure this run went through app.py (its st.navigation and sidebar).

    A folder named ``pages/`` next to app.py makes Streamlit start in its old multipage mode, which runs a page file
    alone, until the first ``st.navigation`` call switches that mode off. That happens at the first run of a server
    opened on a page's address, and on every rerun under AppTest (which resets the mode before each run). Switch it
    off and rerun: the rerun goes through app.py and lands on the same page, widget callbacks already applied.
    """
    if getattr(PagesManager, "uses_pages_directory", False):  # internal flag: absent in other versions, no-op
        PagesManager.uses_pages_directory = False
        st.rerun()


@st.cache_resource
def job_queue() -> jobs.JobQueue:
    """One queue per server process, shared by every session: reloading the page re-attaches to its jobs."""
    return jobs.JobQueue()


@st.cache_resource(max_entries=16, show_spinner=False)
def _open_project(home: str, name: str):
    return open_project(name, home)


@st.cache_resource(max_entries=4, show_spinner="Loading the trained model…")
def fitted_strategy(run_dir: str):
    """The fitted strategy of a run (backbone + head), loaded once per process."""
    return studio.fitted_run(run_dir)


def home() -> str:
    return str(workspace_home())


def projects() -> list[str]:
    return list_projects()


def select_project(name: str | None) -> None:
    """Make ``name`` the current project (call before the sidebar picker renders, e.g. in a callback)."""
    st.session_state[PROJECT_KEY] = name
    remember_in_url(name)


def remember_in_url(name: str | None) -> None:
    """Keep the project in the address, so a reload (or a bookmark) opens it again."""
    if name and st.query_params.get("project") != name:
        st.query_params["project"] = name


def init_project_choice() -> None:
    """Pick the project from the URL (a reload keeps it), else the first one; only if not chosen yet."""
    names = projects()
    if st.session_state.get(PROJECT_KEY) not in names:
        wanted = st.query_params.get("project")
        st.session_state[PROJECT_KEY] = wanted if wanted in names else (names[0] if names else None)


def current_project():
    """The open project chosen in the sidebar, or None."""
    name = st.session_state.get(PROJECT_KEY)
    if not name:
        return None
    try:
        return _open_project(home(), name)
    except StoreError as error:
        st.error(str(error))
        return None


def require_project():
    """The current project, or a hint and stop: every page but Home needs one."""
    project = current_project()
    if project is None:
        st.info("Pick or create a project in the sidebar first, or load the sample data on the Home page.")
        st.page_link(HOME_PAGE, label="Go to Home", icon=":material/home:")
        st.stop()
    return project


def create_project_from(key: str) -> None:
    """on_click callback: create the project named in the text input ``key`` and select it."""
    name = (st.session_state.get(key) or "").strip()
    if not name:
        st.session_state["create_error"] = "Type a name for the new project."
        return
    try:
        project = create_project(name)
    except StoreError as error:
        st.session_state["create_error"] = str(error)
        return
    st.session_state.pop("create_error", None)
    st.session_state[key] = ""
    select_project(project.name)


def project_creator(key: str, *, label: str = "New project name") -> None:
    st.text_input(label, key=key, placeholder="e.g. leaf diseases")
    st.button("Create project", key=f"{key}-button", on_click=create_project_from, args=(key,),
              icon=":material/add:")
    if st.session_state.get("create_error"):
        st.error(st.session_state["create_error"])


def run_picker(label: str, runs: list[dict], key: str, *, prefer_best: bool = False) -> dict:
    """A selectbox over runs (newest first) that returns the chosen run's data; first choice: newest or best."""
    by_name = studio.runs_by_name(runs)
    if st.session_state.get(key) not in by_name:
        st.session_state[key] = studio.best_run(runs)["name"] if prefer_best else runs[0]["name"]
    name = st.selectbox(label, list(by_name), format_func=lambda n: studio.run_label(by_name[n]), key=key)
    return by_name[name]


def show_error(error: BaseException, *, prefix: str = "") -> None:
    st.error(prefix + studio.readable_error(error))
