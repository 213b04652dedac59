"""Compare: every run of the project in one table, curves, confusion matrices, mistakes and an embedding map."""

import streamlit as st

from fsl_app import augment, inspect_run, projection, run_tables, training_job
from fsl_app.comparison import PROTOCOL_NAMES
from fsl_app.evaluation import PROTOCOL_LABELS
from fsl_app.runs import read_run
from fsl_app.strategies import list_strategies
from fsl_app.views import _charts, _compare_panel, _forecast_panel, _nav, _shared, _shift_panel

MAX_SIDE_BY_SIDE = 3
MISTAKES_SHOWN = 24
ALL_PROTOCOL_LABELS = {**PROTOCOL_LABELS, "auto": "auto (one protocol for every strategy, chosen from the data)"}


@st.cache_data(show_spinner="Projecting the embeddings…", max_entries=16)
def embedding_points(run_dir: str, method: str, _names: dict) -> inspect_run.EmbeddingMap:
    """Cached per run and method; ``_names`` (sha256 -> file name) is not hashed: 100,000 names took seconds."""
    return inspect_run.embedding_map(_shared.fitted_strategy(run_dir), read_run(run_dir), method, names=_names)


def source_names(project, runs: list[dict]) -> dict:
    """sha256 -> imported file name of the images the runs used (all the page labels), not of every image."""
    shas = {image.get("sha256") for run in runs for image in (run["config"].get("data") or {}).get("images") or []}
    shas |= {row["sha256"] for run in runs for row in run.get("predictions") or []}
    return project.source_names(shas - {None})


def runs_table(runs: list[dict]) -> None:
    st.dataframe(run_tables.run_table(runs), hide_index=True, width="stretch",
                 column_config={"run": st.column_config.TextColumn("run", width="medium"),
                                "accuracy %": st.column_config.NumberColumn(format="%.1f"),
                                "95 % CI low": st.column_config.NumberColumn(format="%.1f"),
                                "95 % CI high": st.column_config.NumberColumn(format="%.1f")})


def all_strategies_plan(project, backbone: dict, runs: list[dict]):
    """(plan, requests) for "evaluate every strategy" with the chosen protocol and seed; ``auto`` resolved once."""
    pipeline = augment.load_project_augment(project.path).resolved_pipeline()
    return training_job.requests_for_all_strategies(
        project.path, backbone.get("name"), backbone.get("weights", "auto"), st.session_state["all-protocol"],
        int(st.session_state["all-seed"]), pipeline, past_runs=runs)


def queue_all_strategies(project, backbone: dict, runs: list[dict]) -> None:
    """on_click: one run per strategy with the same resolved protocol and seed."""
    try:
        plan, requests = all_strategies_plan(project, backbone, runs)
    except ValueError as error:
        st.session_state["all-error"] = str(error)
        return
    for request in requests:
        training_job.submit_training(_shared.job_queue(), request, owner=project.name)
    st.session_state["all-queued"] = (f"Queued {len(requests)} runs, all with {PROTOCOL_NAMES[plan.protocol]} and "
                                      f"seed {requests[0].seed}: they run one after the other.")


def evaluate_all(project, runs: list[dict]) -> None:
    latest = runs[0]["config"]
    backbone = latest.get("backbone", {})
    with st.expander("Evaluate every strategy with the same protocol and seed"):
        st.caption(f"Queues one run per strategy (default hyperparameters) on {backbone.get('name')} with the "
                   "weights of the latest run, on the same splits, so the comparison is fair.")
        st.selectbox("Protocol", list(ALL_PROTOCOL_LABELS), format_func=ALL_PROTOCOL_LABELS.get, key="all-protocol")
        st.number_input("Seed", 0, 1_000_000, int(latest.get("seed", 0)), key="all-seed")
        try:
            st.caption(all_strategies_plan(project, backbone, runs)[0].text())
        except ValueError as error:
            st.warning(str(error))
            return
        st.button(f"Evaluate {len(list_strategies())} strategies", key="all-button",
                  icon=":material/playlist_play:", on_click=queue_all_strategies, args=(project, backbone, runs))
        if "all-error" in st.session_state:
            st.error(st.session_state.pop("all-error"))
        if "all-queued" in st.session_state:
            st.success(st.session_state.pop("all-queued"))
            _nav.link(_nav.TRAIN, "Watch them on the Train page")


def curves(selected: list[dict]) -> None:
    rows = run_tables.curve_rows(selected)
    if rows:
        st.subheader("Training curves")
        st.plotly_chart(_charts.training_curves(rows), key="compare-curves")


def confusion_matrices(selected: list[dict]) -> None:
    st.subheader("Confusion matrices")
    columns = st.columns(min(len(selected), MAX_SIDE_BY_SIDE))
    for column, run in zip(columns, selected[:MAX_SIDE_BY_SIDE]):
        metrics = run["metrics"] or {}
        if metrics.get("confusion"):
            column.plotly_chart(_charts.confusion_heatmap(metrics["classes"], metrics["confusion"],
                                                          run_tables.run_label(run)), key=f"confusion-{run['name']}")


def per_class(selected: list[dict]) -> None:
    rows = run_tables.per_class_rows(selected)
    if rows:
        st.subheader("Accuracy per class")
        st.plotly_chart(_charts.per_class_bars(rows), key="compare-per-class")


def mistakes(selected: list[dict], names: dict) -> None:
    st.subheader("Misclassified held-out images")
    wrong = run_tables.misclassified(_shared.run_picker("Run", selected, "mistakes-run"))
    if not wrong:
        st.caption("No mistakes on the held-out images of this run.")
        return
    columns = st.columns(6)
    for index, item in enumerate(wrong[:MISTAKES_SHOWN]):
        caption = f"{names.get(item['sha256'], '')}\ntrue **{item['true']}** → {item['predicted']} " \
                  f"({item['probability']:.0%})"
        columns[index % 6].image(item["path"], caption=caption, width="stretch")


def embedding_section(runs: list[dict], names: dict) -> None:
    st.subheader("Embedding map")
    left, right = st.columns([3, 2])
    with left:
        run = _shared.run_picker("Run", runs, "map-run")
    method = right.radio("Projection", projection.METHODS, format_func=projection.METHOD_LABELS.get,
                         horizontal=True, key="map-method")
    try:
        points = embedding_points(run["run_dir"], method, names)
    except Exception as error:  # noqa: BLE001 - a backbone missing here, an unreadable image
        _shared.show_error(error, prefix="No embedding map: ")
        return
    if points.note:  # a sampled map says so, and is still drawn
        st.info(points.note)
    if not points.points:
        return
    title = f"{run_tables.run_label(run)} · {projection.METHOD_LABELS[method]}"
    event = st.plotly_chart(_charts.embedding_scatter(points.points, title), key="embedding-map",
                            on_select="rerun", selection_mode="points")
    st.caption("Filled: tested in the evaluation; open: only used for training; stars: the strategy's own points "
               "(ProtoNet's prototypes). Click a point to see its image.")
    show_selected_point(event)


def show_selected_point(event) -> None:
    chosen = [point for point in (event.selection.points if event else []) if point.get("customdata")]
    for point in chosen[:4]:
        path = point["customdata"][0]
        if path:
            st.image(path, width=160, caption=point.get("hovertext") or "")


project = _shared.require_project()
st.title(f"Compare · {project.name}")
runs = run_tables.project_runs(project.path)
if not runs:
    st.info("No finished run yet. Train one first.")
    _nav.link(_nav.TRAIN, "Go to Train")
    st.stop()
names = source_names(project, runs)  # run folders know content paths only
runs_table(runs)
_compare_panel.comparison_section(runs, names)
if any((run["metrics"] or {}).get("pool_size") for run in runs):  # runs that learned from the pool: is it shifted?
    _shift_panel.shift_section(project)
evaluate_all(project, runs)
_forecast_panel.forecast_section(runs)
by_name = {run["name"]: run for run in runs}
chosen = st.multiselect("Runs to compare", list(by_name), default=list(by_name)[:2],
                        format_func=lambda name: run_tables.run_label(by_name[name]), key="compare-runs")
selected = [by_name[name] for name in chosen]
if selected:
    curves(selected)
    confusion_matrices(selected)
    per_class(selected)
    mistakes(selected, names)
embedding_section(runs, names)
