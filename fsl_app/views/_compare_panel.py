"""The Compare page's honest comparison: runs grouped by how they were evaluated, paired differences, a recommendation.

Everything is computed by :mod:`fsl_app.comparison`; this module only renders it.
"""

from __future__ import annotations

import streamlit as st

from fsl_app import comparison
from fsl_app.intervals import format_accuracy
from fsl_app.run_tables import pool_text

GALLERY_SIZE = 6


@st.cache_data(show_spinner="Comparing the runs image by image…", max_entries=8)
def compare(key: str, _runs: list[dict]) -> comparison.Comparison:
    """Cached by ``key`` (:func:`~fsl_app.comparison.runs_key`), not by the runs: hashing every prediction of a
    100,000-image project's runs cost a second on every rerun."""
    return comparison.compare_runs(_runs)


def comparison_section(runs: list[dict], names: dict[str, str]) -> None:
    """One block per group of comparable runs; runs from different groups are never ranked together."""
    result = compare(comparison.runs_key(runs), runs)
    st.subheader("Which strategy wins here?")
    st.caption(result.message)
    for number, group in enumerate(result.groups, 1):
        group_block(number, group, names, several=len(result.groups) > 1)
    for item in result.excluded:
        st.caption(f"Left out: {item['run']} — {item['reason']}")


def group_block(number: int, group: comparison.GroupComparison, names: dict[str, str], *, several: bool) -> None:
    with st.container(border=True):
        st.markdown(f"**Group {number}**: {group.description}" if several else f"**{group.description}**")
        standing = {row.run: row.text() for row in group.standings}
        st.dataframe([{"run": row["run"], "strategy": row["strategy"], "pool": pool_text(run["metrics"]),
                       "accuracy": format_accuracy(run["metrics"]), "standing": standing.get(row["run"], ""),
                       "fit s": row["fit_seconds"]}
                      for row, run in zip(group.rows(), group.runs)], hide_index=True, width="stretch")
        recommendation = group.recommendation
        if group.headline and recommendation.kind == "winner":
            st.success(group.headline, icon=":material/trophy:")
            st.caption(recommendation.text)
        elif recommendation.kind == "winner":
            st.success(recommendation.text, icon=":material/trophy:")
        elif recommendation.kind == "cheapest":
            if group.headline:
                st.markdown(f"**{group.headline}**")
            st.info(recommendation.text, icon=":material/balance:")
        else:
            st.caption(recommendation.text)
        for pair in group.pairs:
            pair_block(pair, names)


def pair_block(pair: comparison.PairedDiff, names: dict[str, str]) -> None:
    title = (f"{pair.strategy_a} vs {pair.strategy_b}: {pair.difference * 100:+.1f} points "
             f"(95 % paired interval {pair.ci_low * 100:+.1f} to {pair.ci_high * 100:+.1f}, McNemar p={pair.p_value:.2g})")
    with st.expander(title):
        st.write(pair.verdict)
        gallery(f"Right only with {pair.strategy_a}", pair.only_a_right, "predicted_b", names)
        gallery(f"Right only with {pair.strategy_b}", pair.only_b_right, "predicted_a", names)


def gallery(title: str, rows: list[dict], wrong_key: str, names: dict[str, str]) -> None:
    if not rows:
        return
    st.markdown(f"{title} ({len(rows)})")
    columns = st.columns(GALLERY_SIZE)
    for index, row in enumerate(rows[:GALLERY_SIZE]):
        caption = f"{names.get(row['sha256'], '')}\n{row['true']} (other: {row[wrong_key]})"
        columns[index].image(row["path"], caption=caption, width="stretch")
