"""Train: pick a backbone, weights, a strategy with its hyperparameters and a protocol; watch the job live."""

import streamlit as st

from fsl_app import jobs, studio
from pages import _charts, _shared

_shared.use_navigation()

OTHER_BACKBONE = "other timm model…"
WEIGHT_LABELS = {"auto": "pretrained (auto)", "random": "random (no pretraining)", "file": "checkpoint file"}
DEFAULT_STRATEGY = "linear"
POLL_SECONDS = 1.5


@st.cache_data(show_spinner=False)
def backbone_summary(name: str) -> studio.BackboneSummary:
    return studio.backbone_summary(name)


@st.cache_data(show_spinner=False)
def device_text() -> str:
    return studio.device_text()


# --- the form -------------------------------------------------------------------------------------------------------

def backbone_picker() -> tuple[str, studio.BackboneSummary]:
    choice = st.selectbox("Backbone", studio.backbone_names() + [OTHER_BACKBONE], key="train-backbone",
                          on_change=lambda: st.session_state.pop("train-weights", None))
    name = choice
    if choice == OTHER_BACKBONE:
        name = st.text_input("timm model name", key="train-backbone-other", placeholder="e.g. resnet34.a1_in1k")
        name = name.strip()
    summary = backbone_summary(name) if name else None
    if summary is None:
        st.stop()
    if summary.error:
        st.error(summary.error)
        st.stop()
    size = f"{summary.params_m:g} M parameters" if summary.params_m is not None else ""
    side = f"input {summary.input_size[1]}×{summary.input_size[2]}" if summary.input_size else ""
    st.caption(" · ".join(part for part in (f"weights: {summary.availability}", size, side) if part))
    return name, summary


def weights_picker(project, name: str, summary: studio.BackboneSummary) -> str | None:
    if "train-weights" not in st.session_state:
        st.session_state["train-weights"] = "random" if summary.default_weights == "random" else "auto"
    kind = st.radio("Weights", list(WEIGHT_LABELS), format_func=WEIGHT_LABELS.get, key="train-weights",
                    horizontal=True)
    if kind == "random":
        st.warning("Random weights: the features mean nothing before training, so few-shot accuracy will be poor. "
                   "Use it for quick tests or with fine-tuning on many images.", icon=":material/warning:")
        return "random"
    if kind == "file":
        upload = st.file_uploader("Checkpoint (.pth, .pt, .bin or .safetensors state dict)",
                                  type=["pth", "pt", "bin", "safetensors"], key="train-weights-file")
        if upload is None:
            st.session_state.pop("train-weights-path", None)
            st.info("Drop a checkpoint file made for this architecture.")
            return None
        path = str(studio.save_weights_file(project, upload.name, upload.getvalue()))
        st.session_state["train-weights-path"] = path
        return path
    if summary.needs_download:
        st.warning(f"No pretrained weights for {name} on this computer ({summary.availability}). Training will "
                   "try to download them; offline, choose a checkpoint file instead.", icon=":material/cloud_off:")
    return "auto"


def param_key(strategy: str, name: str) -> str:
    return f"param-{strategy}-{name}"


def widget_default(spec: studio.ParamSpec):
    return studio.PROJECT_AUGMENT if spec.kind == "augment" else spec.default


def param_widget(strategy: str, spec: studio.ParamSpec) -> None:
    key, default, help_text = param_key(strategy, spec.name), widget_default(spec), spec.help or None
    if spec.kind in ("choice", "augment"):
        options = list(spec.choices)
        st.selectbox(spec.name, options, index=options.index(default) if default in options else 0, key=key,
                     help=help_text)
    elif spec.kind == "bool":
        st.checkbox(spec.name, value=default, key=key, help=help_text)
    elif spec.kind == "int":
        st.number_input(spec.name, value=int(default), step=1, key=key, help=help_text)
    elif spec.kind == "float":
        st.number_input(spec.name, value=float(default), format="%g", key=key, help=help_text)
    else:
        st.text_input(spec.name, value=str(default), key=key, help=help_text)


def strategy_picker() -> None:
    names = studio.strategy_names()
    strategy = st.selectbox("Strategy", names, index=names.index(DEFAULT_STRATEGY) if DEFAULT_STRATEGY in names
                            else 0, key="train-strategy")
    with st.expander("Hyperparameters"):
        for spec in studio.param_specs(strategy):
            param_widget(strategy, spec)


def protocol_picker() -> None:
    left, right = st.columns([3, 1])
    left.selectbox("Evaluation protocol", list(studio.PROTOCOL_LABELS), format_func=studio.PROTOCOL_LABELS.get,
                   key="train-protocol")
    right.number_input("Seed", 0, 1_000_000, 0, key="train-seed")


def readiness(project) -> bool:
    counts = {name: count for name, count in project.class_counts().items() if count > 0}
    if len(counts) < 2:
        st.warning("Training needs at least 2 classes with images. Add them on the Data page.",
                   icon=":material/warning:")
        st.page_link(_shared.DATA_PAGE, label="Go to Data", icon=":material/photo_library:")
        return False
    st.caption(f"{sum(counts.values())} labeled images in {len(counts)} classes · device: {device_text()}")
    return True


def request_from_state(project) -> studio.TrainRequest:
    """The request as the widgets stand now (read in the Train button's callback, so never one rerun late)."""
    state = st.session_state
    backbone = state.get("train-backbone")
    if backbone == OTHER_BACKBONE:
        backbone = (state.get("train-backbone-other") or "").strip()
    weights = state.get("train-weights", "auto")
    if weights == "file":
        weights = state.get("train-weights-path", "")
    strategy, seed = state["train-strategy"], int(state.get("train-seed", 0))
    values = {spec.name: state.get(param_key(strategy, spec.name), widget_default(spec))
              for spec in studio.param_specs(strategy)}
    params = studio.resolve_params(strategy, values, seed=seed,
                                   project_augment=studio.load_project_augment(project).resolved_pipeline())
    return studio.TrainRequest(str(project.path), backbone, weights, strategy, params,
                               state.get("train-protocol", "auto"), seed)


def submit(project) -> None:
    request = request_from_state(project)
    studio.submit_training(_shared.job_queue(), request, owner=project.name)
    st.toast(f"Queued: {request.title()}", icon=":material/schedule:")


def training_form(project) -> None:
    name, summary = backbone_picker()
    weights = weights_picker(project, name, summary)
    strategy_picker()
    protocol_picker()
    ready = readiness(project)
    st.button("Train", type="primary", icon=":material/play_arrow:", disabled=not ready or weights is None,
              on_click=submit, args=(project,), key="train-button")


# --- the jobs -------------------------------------------------------------------------------------------------------

def running_card(view: jobs.JobView) -> None:
    with st.container(border=True):
        st.markdown(f"**Training:** {view.title}")
        fraction, text = studio.job_progress(view)
        st.progress(fraction, text=text)
        if view.steps:
            fit = "final fit" if view.phase.startswith("fitting") else f"evaluation fit {view.fit_number}"
            rows = studio.steps_to_rows(view.steps, fit)
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
            columns[0].metric(f"Accuracy ({metrics.get('protocol')})", studio.accuracy_text(metrics),
                              help="mean accuracy on held-out images ± 95 % confidence interval")
            columns[1].metric("Balanced accuracy", studio.percent(metrics.get("balanced_accuracy")))
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
    finished = [view for view in views if view.finished][::-1][:5]
    for view in finished:
        finished_card(view)
    if not views:
        st.caption("No training job yet in this session of the server. Finished runs are on the Compare page.")
    elif finished:
        st.page_link(_shared.COMPARE_PAGE, label="Compare all runs", icon=":material/leaderboard:")


def jobs_panel(owner: str) -> None:
    st.subheader("Jobs")
    has_active = bool(_shared.job_queue().active(owner))
    st.fragment(render_jobs, run_every=POLL_SECONDS if has_active else None)(owner, has_active)


project = _shared.require_project()
st.title(f"Train · {project.name}")
form, panel = st.columns([2, 3], gap="large")
with form:
    training_form(project)
with panel:
    jobs_panel(project.name)
