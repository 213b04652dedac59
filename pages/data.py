"""Data: add images per class (files or zips), browse them, relabel / move / delete in bulk, review suggestions."""

import streamlit as st

from fsl_app import studio
from fsl_app.store import StoreError
from pages import _shared

_shared.use_navigation()

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp", "zip"]
UNLABELED = "(unlabeled)"
PAGE_SIZE = 36
GRID_COLUMNS = 6


# --- importing ------------------------------------------------------------------------------------------------------

def import_uploads(project, files, label: str | None) -> None:
    """Import uploaded images and zips into ``label`` (None: unlabeled, a zip's folders become classes)."""
    added, duplicates, rejected = [], [], []
    for upload in files:
        try:
            if upload.name.lower().endswith(".zip"):
                report = project.import_zip(upload.getvalue(), label=label)
            else:
                report = project.import_files([(upload.name, upload.getvalue())], label)
        except StoreError as error:
            rejected.append((upload.name, str(error)))
            continue
        added += [item.name for item in report.added]
        duplicates += [(item.name, item.existing_label) for item in report.duplicates]
        rejected += report.rejected
    st.session_state["import_report"] = {"target": label or "the unlabeled pool", "added": added,
                                         "duplicates": duplicates, "rejected": rejected}
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1  # empties the uploaders
    st.rerun()


def import_report() -> None:
    report = st.session_state.get("import_report")
    if not report:
        return
    with st.container(border=True):
        st.success(f"{len(report['added'])} image(s) added to {report['target']}.", icon=":material/check:")
        if report["duplicates"]:
            names = ", ".join(f"{name} (already in {label or 'unlabeled'})" for name, label in report["duplicates"])
            st.info(f"{len(report['duplicates'])} duplicate(s) skipped: {names}", icon=":material/content_copy:")
        for name, reason in report["rejected"]:
            st.error(f"Rejected {name}: {reason}", icon=":material/block:")
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


def add_class(project) -> None:
    name = (st.session_state.get("new-class") or "").strip()
    try:
        project.add_class(name)
        st.session_state["new-class"] = ""
        st.session_state["data-message"] = f"Class {name!r} added: drop its images in its uploader."
    except StoreError as error:
        st.session_state["data-error"] = str(error)


# --- overview -------------------------------------------------------------------------------------------------------

def overview(project) -> None:
    stats = project.stats()
    columns = st.columns(4)
    columns[0].metric("Images", stats.n_images)
    columns[1].metric("Labeled", stats.n_labeled)
    columns[2].metric("Unlabeled", stats.n_unlabeled)
    columns[3].metric("Classes", len(stats.class_counts))
    if stats.class_counts:
        st.bar_chart({"images": stats.class_counts}, horizontal=True, height=min(60 + 28 * len(stats.class_counts),
                                                                                   320))
    for warning in stats.warnings:
        st.warning(warning, icon=":material/warning:")


def messages() -> None:
    if "data-message" in st.session_state:
        st.success(st.session_state.pop("data-message"))
    if "data-error" in st.session_state:
        st.error(st.session_state.pop("data-error"))


# --- browsing and bulk edits ----------------------------------------------------------------------------------------

def selected_ids() -> list[int]:
    return [int(key.split("-", 1)[1]) for key, value in st.session_state.items()
            if isinstance(key, str) and key.startswith("pick-") and value]


def clear_selection() -> None:
    for key in [key for key in st.session_state if isinstance(key, str) and key.startswith("pick-")]:
        del st.session_state[key]


def move_selected(project) -> None:
    target = st.session_state.get("move-target")
    ids = selected_ids()
    try:
        changed = project.set_labels(ids, None if target == UNLABELED else target)
        st.session_state["data-message"] = f"{changed} image(s) moved to {target}."
    except StoreError as error:
        st.session_state["data-error"] = str(error)
    clear_selection()


def delete_selected(project) -> None:
    try:
        removed = project.delete_images(selected_ids())
        st.session_state["data-message"] = f"{removed} image(s) deleted."
    except StoreError as error:
        st.session_state["data-error"] = str(error)
    clear_selection()


def undo(project) -> None:
    result = project.undo_last_label_change()
    st.session_state["data-message"] = f"Undone: {result}" if result else "Nothing to undo."


def select_page(images) -> None:
    for image in images:
        st.session_state[f"pick-{image.id}"] = True


def thumbnail_grid(project, images) -> None:
    columns = st.columns(GRID_COLUMNS)
    for index, image in enumerate(images):
        with columns[index % GRID_COLUMNS]:
            st.image(str(project.thumbnail_path(image.id)), width="stretch")
            st.checkbox(image.source_name[:22], key=f"pick-{image.id}")


def bulk_actions(project, shown) -> None:
    targets = project.classes() + [UNLABELED]
    count = len(selected_ids())
    left, middle, right = st.columns([2, 3, 3])
    left.button("Select all shown", on_click=select_page, args=(shown,), icon=":material/select_all:")
    with middle:
        st.selectbox("Move selected to", targets, key="move-target")
        st.button(f"Move {count} selected", on_click=move_selected, args=(project,), disabled=not count,
                  icon=":material/drive_file_move:")
    with right:
        st.button(f"Delete {count} selected", on_click=delete_selected, args=(project,), disabled=not count,
                  icon=":material/delete:")
        st.button("Undo last label change", on_click=undo, args=(project,), icon=":material/undo:")


def browse_section(project) -> None:
    st.subheader("Browse and edit")
    counts = project.class_counts()
    options = list(counts) + [UNLABELED]
    current = st.session_state.get("browse-class")
    if current not in options or (current == UNLABELED and len(options) > 1 and not project.images(labeled=False)):
        st.session_state["browse-class"] = options[0]
    shown_class = st.segmented_control("Show", options, key="browse-class",
                                       format_func=lambda name: f"{name} ({counts[name]})" if name in counts else name)
    shown_class = shown_class or options[0]
    images = project.images(labeled=False) if shown_class == UNLABELED else project.images(class_name=shown_class)
    if not images:
        st.caption("No images here yet.")
        return
    pages = (len(images) - 1) // PAGE_SIZE + 1
    if st.session_state.get("browse-page", 1) > pages:
        st.session_state["browse-page"] = pages
    page = st.number_input(f"Page (of {pages})", 1, pages, key="browse-page") if pages > 1 else 1
    shown = images[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    bulk_actions(project, shown)
    thumbnail_grid(project, shown)


def class_tools(project) -> None:
    classes = project.classes()
    if not classes:
        return
    with st.expander("Rename, merge or delete classes"):
        rename, merge, delete = st.columns(3)
        with rename:
            st.selectbox("Class", classes, key="rename-from")
            st.text_input("New name", key="rename-to")
            st.button("Rename", on_click=run_store_action, args=(project.rename_class, "rename-from", "rename-to"))
        with merge:
            st.multiselect("Merge these classes", classes, key="merge-from")
            st.selectbox("into", classes, key="merge-into")
            st.button("Merge", on_click=run_store_action, args=(project.merge_classes, "merge-from", "merge-into"))
        with delete:
            st.selectbox("Delete class (its images become unlabeled)", classes, key="delete-class")
            st.button("Delete class", on_click=run_store_action, args=(project.delete_class, "delete-class"))


def run_store_action(action, *keys) -> None:
    try:
        action(*(st.session_state.get(key) for key in keys))
        st.session_state["data-message"] = "Done."
    except StoreError as error:
        st.session_state["data-error"] = str(error)


# --- suggestions and duplicates -------------------------------------------------------------------------------------

def accept(project, image_id: int, label: str) -> None:
    try:
        project.set_labels([image_id], label, create_missing_class=True, actor="suggestion")
    except StoreError as error:
        st.session_state["data-error"] = str(error)


def accept_confident(project, suggestions) -> None:
    threshold = st.session_state["suggest-threshold"]
    chosen = [s for s in suggestions if s.confidence >= threshold]
    for label in {s.label for s in chosen}:
        project.set_labels([s.image_id for s in chosen if s.label == label], label, create_missing_class=True,
                           actor="suggestion")
    st.session_state["data-message"] = f"{len(chosen)} suggestion(s) accepted."


def suggestions_section(project) -> None:
    runs = studio.project_runs(project)
    if not project.images(labeled=False):
        return
    st.subheader("Label the unlabeled pool with model suggestions")
    if not runs:
        st.caption("Train a model first: its suggestions for the unlabeled images appear here.")
        return
    run = _shared.run_picker("Suggestions from", runs, "suggest-run", prefer_best=True)
    if not st.toggle("Show suggestions (most uncertain first)", key="suggest-on"):
        return
    try:
        suggestions = studio.suggestions_for(project, _shared.fitted_strategy(run["run_dir"]))
    except Exception as error:  # noqa: BLE001 - a run whose backbone is gone, a deleted image...
        _shared.show_error(error, prefix="No suggestions: ")
        return
    threshold = st.slider("Accept every suggestion at least this confident", 0.5, 1.0, 0.9, 0.05,
                          key="suggest-threshold")
    st.button(f"Accept the {sum(s.confidence >= threshold for s in suggestions)} confident suggestion(s)",
              on_click=accept_confident, args=(project, suggestions))
    columns = st.columns(GRID_COLUMNS)
    for index, suggestion in enumerate(suggestions):
        with columns[index % GRID_COLUMNS]:
            st.image(str(project.thumbnail_path(suggestion.image_id)), width="stretch")
            st.caption(f"**{suggestion.label}** {suggestion.confidence:.0%} · margin {suggestion.margin:.2f}")
            st.button(f"Accept {suggestion.label}", key=f"accept-{suggestion.image_id}", on_click=accept,
                      args=(project, suggestion.image_id, suggestion.label))


def duplicates_section(project) -> None:
    pairs = project.near_duplicates()
    if not pairs:
        return
    with st.expander(f"{len(pairs)} near-duplicate pair(s): check them, delete copies you do not need"):
        for first, second, distance in pairs[:20]:
            left, middle, right = st.columns([2, 2, 3])
            left.image(str(project.thumbnail_path(first)), width=120)
            middle.image(str(project.thumbnail_path(second)), width=120)
            a, b = project.get_image(first), project.get_image(second)
            right.write(f"{a.source_name} ({a.label or 'unlabeled'}) vs {b.source_name} ({b.label or 'unlabeled'}), "
                        f"perceptual distance {distance}")


project = _shared.require_project()
st.title(f"Data · {project.name}")
messages()
import_report()
overview(project)
add_images_section(project)
browse_section(project)
class_tools(project)
suggestions_section(project)
duplicates_section(project)
