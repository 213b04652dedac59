"""Export & try: predict a new image with a trained run, see its nearest training images, download the model,
compare its exported variants and distil it into a smaller student."""

from pathlib import Path

import streamlit as st

from fsl_app import inspect_run, run_downloads, run_tables
from fsl_app.views import _camera, _charts, _distill_panel, _export_variants, _nav, _shared

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]
FORMAT_LABELS = {"onnx": "ONNX", "torchscript": "TorchScript", "bundle": "Bundle"}  # the formats offered, in order
FORMAT_HELP = {
    "onnx": ".onnx file: runs with onnxruntime alone, no PyTorch needed",
    "torchscript": ".pt file: runs with PyTorch alone",
    "bundle": ".zip: safetensors weights, ONNX model, predict scripts, requirements and a model card",
}


def run_summary(run: dict) -> None:
    config, metrics = run["config"], run["metrics"] or {}
    left, right = st.columns([3, 1])
    left.markdown(f"**{config.get('strategy')}** on **{config.get('backbone', {}).get('name')}** "
                  f"({config.get('backbone', {}).get('source')} weights), trained on {metrics.get('n_images')} "
                  f"images of {len(config.get('classes', []))} classes: {', '.join(config.get('classes', []))}.")
    value, interval = run_tables.accuracy_metric(metrics)
    right.metric(f"Accuracy ({metrics.get('protocol')})", value)
    right.caption(interval)


def try_image(run: dict) -> None:
    st.subheader("Try a new image")
    upload = st.file_uploader("Drop an image the model has not seen", type=IMAGE_TYPES, key="try-image")
    upload = upload or _camera.camera_shot("camera-try", "Take a photo to try")
    if upload is None:
        return
    left, right = st.columns([1, 2])
    left.image(upload.getvalue(), caption=upload.name, width="stretch")
    try:
        strategy = _shared.fitted_strategy(run["run_dir"])
        prediction = inspect_run.predict_image(strategy, upload.getvalue(), upload.name,
                                               training=inspect_run.run_image_set(run))
    except Exception as error:  # noqa: BLE001 - an unreadable image, a backbone missing here
        _shared.show_error(error, prefix="Cannot predict: ")
        return
    with right:
        best = prediction.top_k[0]
        st.markdown(f"Prediction: **{best['label']}** ({best['probability']:.0%})")
        st.plotly_chart(_charts.probability_bars(prediction.top_k), key="try-probabilities")
    if prediction.nearest:
        st.caption("Nearest training images in the model's embedding space")
        columns = st.columns(len(prediction.nearest))
        for column, item in zip(columns, prediction.nearest):
            column.image(item["path"], caption=f"{item['label']} · similarity {item['similarity']:.2f}",
                         width="stretch")


def downloads(project, run: dict) -> None:
    st.subheader("Download the model")
    run_dir = run["run_dir"]
    st.download_button("Run folder (.zip)", key="download-run",
                       data=lambda: run_downloads.run_zip_bytes(run_dir), file_name=f"{run['name']}.zip",
                       mime="application/zip", on_click="ignore", icon=":material/folder_zip:")
    st.caption("config, metrics, predictions and model.safetensors: use it with "
               "`fsl-app predict RUN_FOLDER image.jpg` or `fsl-app export`.")
    for format in FORMAT_LABELS:
        export_button(project, run_dir, format)
    if "export-error" in st.session_state:
        st.error(st.session_state.pop("export-error"))


def prepare_export(project, run_dir: str, format: str) -> None:
    """on_click: write the export once (it is checked against the run's own predictions)."""
    try:
        st.session_state[f"export-{format}-{run_dir}"] = str(run_downloads.export_once(project.path, run_dir, format))
    except Exception as error:  # noqa: BLE001 - shown in words
        st.session_state["export-error"] = f"{format} export failed: {_shared.error_text(error)}"


def export_button(project, run_dir: str, format: str) -> None:
    label, description = FORMAT_LABELS[format], FORMAT_HELP[format]
    prepared = st.session_state.get(f"export-{format}-{run_dir}")
    left, right = st.columns([1, 1], vertical_alignment="center")
    right.caption(description)
    with left:
        if prepared is None:
            st.button(f"Prepare {label}", key=f"prepare-{format}", on_click=prepare_export,
                      args=(project, run_dir, format), width="stretch")
            return
        path = Path(prepared)
        st.download_button(f"Download {label}", key=f"download-{format}", data=lambda: path.read_bytes(),
                           file_name=path.name, on_click="ignore", icon=":material/download:", width="stretch")


project = _shared.require_project()
st.title(f"Export & try · {project.name}")
runs = run_tables.project_runs(project.path)
if not runs:
    st.info("No finished run yet. Train one first.")
    _nav.link(_nav.TRAIN, "Go to Train")
    st.stop()
run = _shared.run_picker("Run", runs, "export-run", prefer_best=True)
run_summary(run)
left, right = st.columns([3, 2], gap="large")
with left:
    try_image(run)
with right:
    downloads(project, run)
st.divider()
_export_variants.variants_panel(project, run)
_distill_panel.distill_panel(project, run)
