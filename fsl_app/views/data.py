"""Data: add images per class (files or zips), browse them, relabel / move / delete in bulk, review suggestions."""

import streamlit as st

from fsl_app.store import StoreError
from fsl_app.views import (_camera, _data_edit, _data_suggestions, _label_first_panel, _label_review, _shared,
                          _shift_panel)

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp", "zip"]


# --- importing ------------------------------------------------------------------------------------------------------

def import_uploads(project, files, label: str | None) -> None:
    """Import uploaded images and zips into ``label`` (None: unlabeled, a zip's folders become classes)."""
    report = project.import_uploads(files, label)
    st.session_state["import_report"] = {"target": label or "the unlabeled pool", "report": report}
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1  # empties the uploaders
    st.rerun()


def import_report() -> None:
    shown = st.session_state.get("import_report")
    if not shown:
        return
    report = shown["report"]
    with st.container(border=True):
        st.success(f"{len(report.added)} image(s) added to {shown['target']}.", icon=":material/check:")
        for level, text in report.lines():  # duplicates, skipped entries, label conflicts, rejected files
            {"info": st.info, "warning": st.warning, "error": st.error}[level](text)
        st.button("Dismiss", key="dismiss-report", on_click=lambda: st.session_state.pop("import_report", None))


def uploader(project, label: str | None, title: str, key: str) -> None:
    files = st.file_uploader(title, type=IMAGE_TYPES, accept_multiple_files=True,
                             key=f"upload-{st.session_state.get('upload_round', 0)}-{key}")
    if files:
        import_uploads(project, files, label)


def add_images_section(project) -> None:
    st.subheader("Add images")
    classes = project.classes()
    columns = st.columns(min(3, max(1, len(classes))))
    for index, name in enumerate(classes):
        with columns[index % len(columns)]:
            uploader(project, name, f"Images of **{name}**", f"class-{name}")
    left, right = st.columns(2)
    with left:
        uploader(project, None, "Many files or a zip (a zip's folders become classes; loose files stay unlabeled)",
                 "pool")
    with right, st.form("new-class-form", border=False):  # the name and the click reach the server together
        st.text_input("New class", key="new-class", placeholder="e.g. healthy (Enter adds it)")
        st.form_submit_button("Add class", on_click=add_class, args=(project,), icon=":material/add:")
    _camera.add_from_camera(project)


def add_class(project) -> None:
    name = (st.session_state.get("new-class") or "").strip()
    try:
        project.add_class(name)
        st.session_state["new-class"] = ""
        _data_edit.tell(f"Class {name!r} added: drop its images in its uploader.")
    except StoreError as error:
        _data_edit.tell_error(error)


# --- overview -------------------------------------------------------------------------------------------------------

def overview(project) -> None:
    stats = project.stats()
    columns = st.columns(4)
    columns[0].metric("Images", stats.n_images)
    columns[1].metric("Labeled", stats.n_labeled)
    columns[2].metric("Unlabeled", stats.n_unlabeled)
    columns[3].metric("Classes", len(stats.class_counts))
    if stats.class_counts:
        st.bar_chart({"images": stats.class_counts}, horizontal=True,
                     height=min(60 + 28 * len(stats.class_counts), 320))
    for warning in stats.warnings:
        st.warning(warning, icon=":material/warning:")


project = _shared.require_project()
st.title(f"Data · {project.name}")
_data_edit.messages()
import_report()
overview(project)
add_images_section(project)
_data_edit.browse_section(project)
_data_edit.class_tools(project)
_label_review.review_labels_section(project)
_label_first_panel.label_first_section(project)
_data_suggestions.suggestions_section(project)
_shift_panel.shift_section(project)
_data_suggestions.duplicates_section(project)
