"""The Compare page's "How many more images do I need?" panel: a run's learning curve, measured by refitting on
subsampled shots and extrapolated, with "with N more per class: about X % (range)"."""

import plotly.graph_objects as go
import streamlit as st

from fsl_app import learning_curve, training_job
from fsl_app.views import _shared

ASKED_KEY = "forecast-asked"


@st.cache_data(max_entries=16, show_spinner=False)
def cached_forecast(run_dir: str, more: int) -> learning_curve.Forecast:
    return learning_curve.forecast_run(run_dir, more=(more,), load=training_job.cached_backbone)


def curve_chart(forecast: learning_curve.Forecast) -> go.Figure:
    prediction = forecast.predictions[0]
    shots = list(range(1, prediction.shots + 1))
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=shots, y=[100 * v for v in forecast.curve_at(shots)], mode="lines",
                                name="fitted curve"))
    figure.add_trace(go.Scatter(x=[p.shots for p in forecast.points], y=[100 * p.accuracy for p in forecast.points],
                                error_y={"array": [100 * p.spread for p in forecast.points]}, mode="markers",
                                name="measured (held out)"))
    for point, label in ((forecast.now, "now"), (prediction, f"+{prediction.more_per_class} per class")):
        figure.add_trace(go.Scatter(x=[point.shots], y=[100 * point.accuracy], mode="markers", name=label,
                                    error_y={"type": "data", "symmetric": False,
                                             "array": [100 * (point.high - point.accuracy)],
                                             "arrayminus": [100 * (point.accuracy - point.low)]}))
    figure.update_layout(xaxis_title="labeled images per class", yaxis_title="balanced accuracy %", height=320,
                         margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return figure


def show_forecast(forecast: learning_curve.Forecast) -> None:
    if not forecast.available:
        st.info(forecast.message, icon=":material/info:")
        return
    prediction = forecast.predictions[0]
    left, right = st.columns(2)
    left.metric(f"Now ({forecast.now.shots} per class, on the curve)", f"{100 * forecast.now.accuracy:.0f} %")
    right.metric(f"With {prediction.more_per_class} more per class", f"{100 * prediction.accuracy:.0f} %",
                 delta=f"{100 * (prediction.accuracy - forecast.now.accuracy):+.0f} points")
    st.caption(f"{forecast.range_percent} % range {100 * prediction.low:.0f}–{100 * prediction.high:.0f} %. "
               f"{forecast.message} {forecast.note} The range covers the noise of the subsamples, not a curve of "
               "another shape: treat it as a rough guide.")
    st.plotly_chart(curve_chart(forecast), key="forecast-chart")


def forecast_section(runs: list[dict]) -> None:
    st.subheader("How many more images do I need?")
    left, right = st.columns([3, 1])
    with left:
        run = _shared.run_picker("Forecast for", runs, "forecast-run", prefer_best=True)
    more = right.number_input("More images per class", 1, 100, 5, key="forecast-more")
    counts = (run["config"].get("class_counts") or {})
    problem = learning_curve.forecast_problem(counts)
    if problem:
        st.info(problem, icon=":material/info:")
        return
    if st.button("Forecast", key="forecast-button", icon=":material/trending_up:"):
        st.session_state[ASKED_KEY] = run["run_dir"]
    if st.session_state.get(ASKED_KEY) != run["run_dir"]:
        st.caption("Refits the run's strategy on 1, 2, 3… images per class (several draws each, tested on the "
                   "images left out), fits a power law and extrapolates: a few seconds on cached features.")
        return
    with st.spinner("Refitting on subsampled shots…"):
        try:
            forecast = cached_forecast(run["run_dir"], int(more))
        except Exception as error:  # noqa: BLE001 - a backbone gone from this machine, images deleted since the run
            _shared.show_error(error, prefix="No forecast: ")
            return
    show_forecast(forecast)
