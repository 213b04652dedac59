"""Augment: choose a preset or tune a pipeline with sliders, preview seeded copies, save it with the project."""

from dataclasses import asdict

import streamlit as st

from fsl_app import augment
from fsl_app.views import _augment_check_panel, _shared

CHOICES = [*augment.PRESETS, augment.CUSTOM]
PREVIEW_CHOICES = 500  # images offered to preview (a big project lists its first ones)
SLIDERS = {  # field: (label, min, max, step)
    "horizontal_flip": ("Horizontal flip (probability)", 0.0, 1.0, 0.05),
    "vertical_flip": ("Vertical flip (probability)", 0.0, 1.0, 0.05),
    "rotate_degrees": ("Rotate up to (degrees)", 0, 180, 5),
    "crop_min_scale": ("Random resized crop: keep at least (share of the image, 1 = off)", 0.2, 1.0, 0.05),
    "brightness": ("Brightness jitter", 0.0, 1.0, 0.05),
    "contrast": ("Contrast jitter", 0.0, 1.0, 0.05),
    "saturation": ("Saturation jitter", 0.0, 1.0, 0.05),
    "hue": ("Hue jitter", 0.0, 0.5, 0.01),
    "color_jitter": ("Colour jitter (probability)", 0.0, 1.0, 0.05),
    "blur": ("Gaussian blur (probability)", 0.0, 1.0, 0.05),
    "noise": ("Gaussian noise (probability)", 0.0, 1.0, 0.05),
    "coarse_dropout": ("Coarse dropout: blank patches (probability)", 0.0, 1.0, 0.05),
}


def init_state(project) -> None:
    """Fill the controls from this session's draft (first: the project's saved pipeline) before they render.

    Widget values do not survive a visit to another page, so the draft, a plain session value updated by every
    control's on_change, is the source of truth.
    """
    draft = st.session_state.get("aug-draft")
    if draft is None or draft["project"] != project.name:
        saved = augment.load_project_augment(project.path)
        draft = {"project": project.name, "choice": saved.choice if saved.choice in CHOICES else "light",
                 "settings": asdict(saved.settings)}
        st.session_state["aug-draft"] = draft
    st.session_state["aug-choice"] = draft["choice"]
    for name, value in draft["settings"].items():
        st.session_state[f"aug-{name}"] = value


def remember(name: str) -> None:
    """on_change of a control: copy its value into the draft."""
    draft = st.session_state["aug-draft"]
    if name == "choice":
        draft["choice"] = st.session_state["aug-choice"]
    else:
        draft["settings"][name] = st.session_state[f"aug-{name}"]


def current_settings() -> augment.AugmentSettings:
    """The sliders' values (the draft fills in those not drawn this run)."""
    values = {**st.session_state["aug-draft"]["settings"],
              **{name: st.session_state[f"aug-{name}"] for name in SLIDERS if f"aug-{name}" in st.session_state}}
    return augment.AugmentSettings.from_dict(values)


def current_choice() -> str:
    return st.session_state.get("aug-choice", st.session_state["aug-draft"]["choice"])


def controls() -> None:
    st.selectbox("Pipeline", CHOICES, key="aug-choice", on_change=remember, args=("choice",),
                 help="Presets go from none to strong; custom lets you set every transform.")
    if current_choice() != augment.CUSTOM:
        st.caption("Choose **custom** to edit the transforms with sliders.")
        return
    for name, (label, low, high, step) in SLIDERS.items():
        st.slider(label, low, high, step=step, key=f"aug-{name}", on_change=remember, args=(name,))


def save(project) -> None:
    try:
        augment.save_project_augment(project.path, current_choice(), current_settings())
        st.session_state["aug-message"] = "Saved: fine-tuning runs of this project will use this pipeline."
    except ValueError as error:
        st.session_state["aug-error"] = str(error)


def preview(project, pipeline: dict) -> None:
    images = project.images(labeled=True, limit=PREVIEW_CHOICES) or project.images(limit=PREVIEW_CHOICES)
    if not images:
        st.info("Add images on the Data page to preview the augmentation.")
        return
    names = {image.id: f"{image.source_name} ({image.label or 'unlabeled'})" for image in images}
    left, middle, right = st.columns([3, 1, 1])
    chosen = left.multiselect("Images", list(names), default=[image.id for image in images[:3]],
                              format_func=names.get, key="aug-images", max_selections=6)
    copies = middle.slider("Copies", 1, 8, 5, key="aug-copies")
    seed = right.number_input("Seed", 0, 10_000, 0, key="aug-seed")
    by_id = {image.id: image for image in images}
    try:
        rows = augment.preview_paths([by_id[i].path for i in chosen], pipeline, copies=copies, seed=int(seed),
                                     shas=[by_id[i].sha256 for i in chosen])
    except Exception as error:  # noqa: BLE001 - an unusable pipeline or image
        _shared.show_error(error, prefix="Cannot preview: ")
        return
    for image_id, row in zip(chosen, rows):
        columns = st.columns(copies + 1)
        columns[0].image(str(by_id[image_id].path), caption="original", width="stretch")
        for column, copy in zip(columns[1:], row):
            column.image(copy, width="stretch")


project = _shared.require_project()
init_state(project)
st.title(f"Augment · {project.name}")
st.caption("Train-time augmentation shows the model varied copies of your few images. It is used by fine-tuning "
           "(strategy **finetune**, and ProtoNet's episodic fine-tuning uses the light preset); frozen-feature "
           "strategies do not need it.")
left, right = st.columns([1, 2])
with left:
    controls()
    pipeline = augment.pipeline_dict(current_choice(), current_settings())
    st.button("Save with the project", type="primary", on_click=save, args=(project,), icon=":material/save:")
    if "aug-message" in st.session_state:
        st.success(st.session_state.pop("aug-message"))
    if "aug-error" in st.session_state:
        st.error(st.session_state.pop("aug-error"))
    saved = augment.load_project_augment(project.path)
    st.caption(f"Saved pipeline: **{saved.choice}**")
    with st.expander("Transforms (albumentations)"):
        st.write("\n".join(f"- {line}" for line in augment.describe_pipeline(pipeline)) or "no transform")
        st.json(pipeline, expanded=False)
with right:
    preview(project, pipeline)
    _augment_check_panel.check_section(project, pipeline)
