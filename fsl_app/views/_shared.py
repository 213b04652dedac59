"""Streamlit pieces every page shares: the current project, the process-wide job queue, cached models, errors.

Heavy or process-wide objects live in ``st.cache_resource``: the job queue (so a running training survives a page
reload and every tab sees it), open projects and fitted strategies. Session state holds only small values.
"""

from __future__ import annotations

import streamlit as st

from fsl_app import inspect_run, jobs, run_tables
from fsl_app.images import ImageError
from fsl_app.store import StoreError, create_project, list_projects, open_project, workspace_home
from fsl_app.views import _nav

PROJECT_KEY = "project"


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
    return inspect_run.fitted_strategy(run_dir)


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
        _nav.link(_nav.HOME, "Go to Home")
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
    by_name = {run["name"]: run for run in runs}
    if st.session_state.get(key) not in by_name:
        st.session_state[key] = run_tables.best_run(runs)["name"] if prefer_best else runs[0]["name"]
    name = st.selectbox(label, list(by_name), format_func=lambda n: run_tables.run_label(by_name[n]), key=key)
    return by_name[name]


def error_text(error: BaseException) -> str:
    """The words a page shows for an error: an image's own message (it starts with the file name), else the job
    queue's readable description."""
    return str(error) if isinstance(error, ImageError) else jobs.describe_error(error)


def show_error(error: BaseException, *, prefix: str = "") -> None:
    st.error(prefix + error_text(error))
