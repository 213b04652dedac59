"""The Train page's jobs panel: live progress and curves of the running job, the queue, the last results."""

import streamlit as st

from fsl_app import jobs, run_tables, training_job
from fsl_app.views import _charts, _nav, _shared

POLL_SECONDS = 1.5
FINISHED_SHOWN = 16  # a whole "evaluate every strategy" batch stays in view (a test holds it to the registry)


def running_card(view: jobs.JobView) -> None:
    with st.container(border=True):
        st.markdown(f"**Training:** {view.title}")
        fraction, text = training_job.job_progress(view)
        st.progress(fraction, text=text)
        if view.steps:
            fit = "final fit" if view.phase.startswith("fitting") else f"evaluation fit {view.fit_number}"
            rows = run_tables.steps_to_rows(view.steps, fit)
            st.plotly_chart(_charts.training_curves(rows, height=260), key=f"live-{view.id}")
        if view.cancel_requested:
            st.caption("Stopping at the next step…")
        else:
            st.button("Cancel", key=f"cancel-{view.id}", on_click=_shared.job_queue().cancel, args=(view.id,),
                      icon=":material/stop:")


def queued_row(view: jobs.JobView) -> None:
    left, right = st.columns([4, 1])
    left.caption(f":material/schedule: queued: {view.title}")
    right.button("Cancel", key=f"cancel-{view.id}", on_click=_shared.job_queue().cancel, args=(view.id,))


def finished_card(view: jobs.JobView) -> None:
    with st.container(border=True):
        if view.status == jobs.DONE:
            metrics = view.result["metrics"]
            st.markdown(f":material/check_circle: **{view.title}** · {view.elapsed_s:.0f} s")
            columns = st.columns([3, 2, 2])
            value, interval = run_tables.accuracy_metric(metrics)
            columns[0].metric(f"Accuracy ({metrics.get('protocol')})", value,
                              help="accuracy on held-out images; below it, its 95 % interval and the tested images")
            columns[0].caption(interval)
            columns[1].metric("Balanced accuracy", run_tables.percent(metrics.get("balanced_accuracy")))
            columns[2].metric("Tested images", metrics.get("n_test"))
        elif view.status == jobs.FAILED:
            st.markdown(f":material/error: **{view.title}**")
            st.error(view.error)
            with st.expander("Details for a bug report"):
                st.code(view.error_detail or "", language="text")
        else:
            st.info(f"Cancelled: {view.title}. Nothing was saved.", icon=":material/cancel:")


def render_jobs(owner: str, had_active: bool) -> None:
    views = _shared.job_queue().jobs(owner)
    active = [view for view in views if not view.finished]
    if had_active and not active:
        st.rerun()  # a job ended: refresh the whole page once, which also stops the polling
    for view in active:
        if view.status == jobs.RUNNING:
            running_card(view)
        else:
            queued_row(view)
    finished = [view for view in views if view.finished][::-1][:FINISHED_SHOWN]
    for view in finished:
        finished_card(view)
    if not views:
        st.caption("No training job yet in this session of the server. Finished runs are on the Compare page.")
    elif finished:
        _nav.link(_nav.COMPARE, "Compare all runs")


def jobs_panel(owner: str) -> None:
    st.subheader("Jobs")
    has_active = bool(_shared.job_queue().active(owner))
    st.fragment(render_jobs, run_every=POLL_SECONDS if has_active else None)(owner, has_active)
