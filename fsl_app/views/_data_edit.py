"""The Data page's browser: a paged thumbnail grid per class, bulk move / delete / undo, class tools."""

import streamlit as st

from fsl_app.store import StoreError

UNLABELED = "(unlabeled)"
PAGE_SIZE = 36
GRID_COLUMNS = 6
MESSAGE, ERROR = "data-message", "data-error"


def tell(message: str) -> None:
    """Show ``message`` as a success at the top of the next run (for widget callbacks)."""
    st.session_state[MESSAGE] = message


def tell_error(error: StoreError | str) -> None:
    st.session_state[ERROR] = str(error)


def messages() -> None:
    if MESSAGE in st.session_state:
        st.success(st.session_state.pop(MESSAGE))
    if ERROR in st.session_state:
        st.error(st.session_state.pop(ERROR))


def selected_ids() -> list[int]:
    return [int(key.split("-", 1)[1]) for key, value in st.session_state.items()
            if isinstance(key, str) and key.startswith("pick-") and value]


def clear_selection() -> None:
    for key in [key for key in st.session_state if isinstance(key, str) and key.startswith("pick-")]:
        del st.session_state[key]


def move_selected(project) -> None:
    target = st.session_state.get("move-target")
    try:
        changed = project.set_labels(selected_ids(), None if target == UNLABELED else target)
        tell(f"{changed} image(s) moved to {target}.")
    except StoreError as error:
        tell_error(error)
    clear_selection()


def delete_selected(project) -> None:
    try:
        tell(f"{project.delete_images(selected_ids())} image(s) deleted.")
    except StoreError as error:
        tell_error(error)
    clear_selection()


def undo(project) -> None:
    result = project.undo_last_label_change()
    tell(f"Undone: {result}" if result else "Nothing to undo.")


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
    count = len(selected_ids())
    left, middle, right = st.columns([2, 3, 3])
    left.button("Select all shown", on_click=select_page, args=(shown,), icon=":material/select_all:")
    with middle:
        st.selectbox("Move selected to", project.classes() + [UNLABELED], key="move-target")
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
    n_unlabeled = project.count_images(labeled=False)
    if current not in options or (current == UNLABELED and len(options) > 1 and not n_unlabeled):
        st.session_state["browse-class"] = options[0]
    shown_class = st.segmented_control("Show", options, key="browse-class",
                                       format_func=lambda name: f"{name} ({counts[name]})" if name in counts else name)
    shown_class = shown_class or options[0]
    shown_filter = {"labeled": False} if shown_class == UNLABELED else {"class_name": shown_class}
    total = n_unlabeled if shown_class == UNLABELED else counts[shown_class]
    if not total:
        st.caption("No images here yet.")
        return
    pages = (total - 1) // PAGE_SIZE + 1
    if st.session_state.get("browse-page", 1) > pages:
        st.session_state["browse-page"] = pages
    page = st.number_input(f"Page (of {pages})", 1, pages, key="browse-page") if pages > 1 else 1
    shown = project.images(**shown_filter, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
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
        tell("Done.")
    except StoreError as error:
        tell_error(error)
