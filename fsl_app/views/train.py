"""Train: pick a backbone, weights, a strategy with its hyperparameters and a protocol; watch the job live."""

import streamlit as st

from fsl_app import augment, backbones, training_job
from fsl_app.dataset import class_count_warnings
from fsl_app.evaluation import PROTOCOL_LABELS
from fsl_app.features import describe_device, pick_device
from fsl_app.strategies import get_strategy_class, list_strategies
from fsl_app.views import _augment_check_panel, _jobs_panel, _nav, _shared, _strategy_notes

OTHER_BACKBONE = "other timm model…"
WEIGHT_LABELS = {"auto": "pretrained (auto)", "random": "random (no pretraining)", "file": "checkpoint file",
                 "base": "base-trained (fsl-app pretrain)"}
DEFAULT_STRATEGY = "linear"


@st.cache_data(show_spinner=False)
def backbone_summary(name: str) -> backbones.BackboneSummary:
    return backbones.backbone_summary(name)


@st.cache_data(show_spinner=False)
def device_text() -> str:
    return describe_device(pick_device())


def backbone_picker() -> tuple[str, backbones.BackboneSummary]:
    choice = st.selectbox("Backbone", backbones.offered_backbones() + [OTHER_BACKBONE], key="train-backbone",
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


def weights_picker(project, name: str, summary: backbones.BackboneSummary) -> str | None:
    if "train-weights" not in st.session_state:
        st.session_state["train-weights"] = "random" if summary.default_weights == "random" else "auto"
    kind = st.radio("Weights", list(WEIGHT_LABELS), format_func=WEIGHT_LABELS.get, key="train-weights",
                    horizontal=True)
    if kind == "random":
        st.warning("Random weights: the features mean nothing before training, so few-shot accuracy will be poor. "
                   "Use it for quick tests or with fine-tuning on many images.", icon=":material/warning:")
        return "random"
    if kind == "base":
        return base_trained_picker(project, name)
    if kind == "file":
        upload = st.file_uploader("Checkpoint (.pth, .pt, .bin or .safetensors state dict)",
                                  type=["pth", "pt", "bin", "safetensors"], key="train-weights-file")
        if upload is None:
            st.session_state.pop("train-weights-path", None)
            st.info("Drop a checkpoint file made for this architecture.")
            return None
        path = str(training_job.save_weights_file(project.path, upload.name, upload.getvalue()))
        st.session_state["train-weights-path"] = path
        return path
    if summary.needs_download:
        st.warning(f"No pretrained weights for {name} on this computer ({summary.availability}). Training will "
                   "try to download them; offline, choose a checkpoint file instead.", icon=":material/cloud_off:")
    return "auto"


def base_trained_picker(project, name: str) -> str | None:
    """A checkpoint from the workspace's backbone folder made for ``name``, with where it came from."""
    found = backbones.pretrained_checkpoints(architecture=name)
    others = sorted({c.architecture for c in backbones.pretrained_checkpoints()} - {c.architecture for c in found})
    if others:
        st.caption(f"Base-trained checkpoints for other backbones: {', '.join(others)} (pick that backbone first).")
    if not found:
        st.info(f"No base-trained checkpoint for {name} yet. Make one from a project with many labeled classes: "
                f"`fsl-app pretrain PROJECT --method protonet --backbone {name}`.")
        return None
    labels = {str(c.path): c.label() for c in found}
    path = st.selectbox("Base-trained checkpoint", list(labels), format_func=labels.get, key="train-weights-base")
    leakage = next(c for c in found if str(c.path) == path).leakage(
        [label for label, count in project.class_counts().items() if count > 0])
    if leakage:
        st.warning(leakage[:1].upper() + leakage[1:], icon=":material/warning:")
    return path


def param_key(strategy: str, name: str) -> str:
    return f"param-{strategy}-{name}"


def widget_default(spec):
    return training_job.PROJECT_PIPELINE if spec.kind == "augment" else spec.default


def param_widget(strategy: str, spec) -> None:
    """One input for a ``ParamSpec``; an ``augment`` picker offers the project's pipeline before the presets."""
    key, default, help_text = param_key(strategy, spec.name), widget_default(spec), spec.help or None
    if spec.kind in ("choice", "augment"):
        options = [training_job.PROJECT_PIPELINE, *spec.choices] if spec.kind == "augment" else list(spec.choices)
        st.selectbox(spec.name, options, index=options.index(default) if default in options else 0, key=key,
                     help=help_text)
    elif spec.kind == "bool":
        st.checkbox(spec.name, value=default, key=key, help=help_text)
    elif spec.kind == "int":
        st.number_input(spec.name, value=int(default), step=1, key=key, help=help_text,
                        min_value=_bound(spec.low, int), max_value=_bound(spec.high, int))
    elif spec.kind == "float":
        st.number_input(spec.name, value=float(default), format="%g", key=key, help=help_text,
                        min_value=_bound(spec.low, float), max_value=_bound(spec.high, float))
    else:
        st.text_input(spec.name, value=str(default), key=key, help=help_text)


def _bound(value, kind):
    return None if value is None else kind(value)


def strategy_picker(project) -> None:
    names = list_strategies()
    strategy = st.selectbox("Strategy", names, index=names.index(DEFAULT_STRATEGY) if DEFAULT_STRATEGY in names
                            else 0, key="train-strategy")
    _strategy_notes.strategy_notes(project, strategy)
    with st.expander("Hyperparameters"):
        for spec in get_strategy_class(strategy).param_specs():
            param_widget(strategy, spec)


def protocol_picker() -> None:
    left, right = st.columns([3, 1])
    left.selectbox("Evaluation protocol", list(PROTOCOL_LABELS), format_func=PROTOCOL_LABELS.get,
                   key="train-protocol")
    right.number_input("Seed", 0, 1_000_000, 0, key="train-seed")


def readiness(project) -> bool:
    counts = {name: count for name, count in project.class_counts().items() if count > 0}
    if len(counts) < 2:
        st.warning("Training needs at least 2 classes with images. Add them on the Data page.",
                   icon=":material/warning:")
        _nav.link(_nav.DATA, "Go to Data")
        return False
    st.caption(f"{sum(counts.values())} labeled images in {len(counts)} classes · device: {device_text()}")
    for warning in class_count_warnings(counts):
        st.warning(warning, icon=":material/warning:")
    return True


def request_from_state(project) -> training_job.TrainRequest:
    """The request as the widgets stand now (read in the Train button's callback, so never one rerun late)."""
    state = st.session_state
    backbone = state.get("train-backbone")
    if backbone == OTHER_BACKBONE:
        backbone = (state.get("train-backbone-other") or "").strip()
    weights = state.get("train-weights", "auto")
    if weights == "file":
        weights = state.get("train-weights-path", "")
    elif weights == "base":
        weights = state.get("train-weights-base", "")
    strategy, seed = state["train-strategy"], int(state.get("train-seed", 0))
    values = {spec.name: state.get(param_key(strategy, spec.name), widget_default(spec))
              for spec in get_strategy_class(strategy).param_specs()}
    params = training_job.resolve_params(
        strategy, values, seed=seed, project_augment=augment.load_project_augment(project.path).resolved_pipeline())
    return training_job.TrainRequest(str(project.path), backbone, weights, strategy, params,
                                     state.get("train-protocol", "auto"), seed, _strategy_notes.use_pool())


def submit(project) -> None:
    request = request_from_state(project)
    training_job.submit_training(_shared.job_queue(), request, owner=project.name)
    st.toast(f"Queued: {request.title()}", icon=":material/schedule:")


def training_form(project) -> None:
    name, summary = backbone_picker()
    weights = weights_picker(project, name, summary)
    strategy_picker(project)
    protocol_picker()
    ready = readiness(project)
    _augment_check_panel.train_warning(project)
    st.button("Train", type="primary", icon=":material/play_arrow:", disabled=not ready or weights is None,
              on_click=submit, args=(project,), key="train-button")


project = _shared.require_project()
st.title(f"Train · {project.name}")
form, panel = st.columns([2, 3], gap="large")
with form:
    training_form(project)
with panel:
    _jobs_panel.jobs_panel(project.name)
