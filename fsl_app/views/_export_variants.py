"""The Export page's variants table: each export of the run with its size, speed here and agreement with the run."""

from pathlib import Path

import streamlit as st

from fsl_app.export import variants as export_variants
from fsl_app.run_downloads import EXPORTS_FOLDER
from fsl_app.views import _shared

SPEED_IMAGES = 16


def measure(project, run: dict, chosen: list[str]) -> None:
    folder = Path(project.path) / EXPORTS_FOLDER
    paths = export_variants.export_variants(run["run_dir"], folder, chosen)
    images = export_variants.pick_images([record.path for record in project.image_set().records], SPEED_IMAGES)
    rows = export_variants.measure_variants(run["run_dir"], paths, images)
    st.session_state[f"variants-{run['run_dir']}"] = [row.to_dict() for row in rows]


def table_rows(rows: list[dict]) -> list[dict]:
    return [{"variant": row["label"], "size MB": _round(row["size_mb"], 2),
             "images/s": _round(row["images_per_s"], 1), "speed vs run": _round(row["speed_vs_run"], 2),
             "top-1 agreement %": _round(None if row["agreement"] is None else 100 * row["agreement"], 1),
             "note": row["error"] or ""} for row in rows]


def _round(value, digits):
    return None if value is None else round(value, digits)


def variants_panel(project, run: dict) -> None:
    st.subheader("Pick an export")
    labels = {name: variant.label for name, variant in export_variants.VARIANTS.items()}
    chosen = st.multiselect("Variants", list(labels), default=list(labels), format_func=labels.get,
                            key="variants-chosen")
    if st.button("Export and measure", key="variants-measure", disabled=not chosen, icon=":material/speed:"):
        with st.spinner("Exporting and timing each variant on this machine…"):
            try:
                measure(project, run, chosen)
            except Exception as error:  # noqa: BLE001 - shown in words
                _shared.show_error(error, prefix="Cannot measure the variants: ")
    rows = st.session_state.get(f"variants-{run['run_dir']}")
    if rows:
        st.dataframe(table_rows(rows), hide_index=True, key="variants-table")
        st.caption(f"Speed: images per second on {rows[0]['n_images']} of the project's images, preprocessed once, "
                   "every variant timed in each round (rotated order, median round). Agreement: share of those images "
                   "whose top class equals the run's own model's.")
