"""The dashboard's figures are built as the plain dicts plotly.js takes (`aggregation.dashboard`), not through
plotly.py's figure classes, which validated every value and took a fifth of the page at 100 sites. They must
still be figures plotly.py accepts (a misspelt property or an out-of-range value raises) and writes back as
they are: what the browser drew before."""

import json
from typing import Any

import plotly.graph_objects as go
import pytest

from aggregation.dashboard import study_dashboard
from studies.disclosure import disclosure_for
from tests.aggregation.support import third_site, three_site_study
from tests.aggregation.test_dashboard_figures import run_history

pytestmark = pytest.mark.usefixtures("no_broker")


def _as_plotly_writes_it(figure: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(go.Figure(figure).to_plotly_json()))


def _assert_plotly_keeps(figures: dict[str, dict[str, Any]]) -> None:
    assert set(figures) == {"global", "sites", "participation", "elapsed", "norms", "heatmap"}
    for name, figure in figures.items():
        assert _as_plotly_writes_it(figure) == json.loads(json.dumps(figure)), name


def test_every_figure_of_a_study_with_history_is_one_plotly_validates_and_keeps(p):
    history = run_history(p)  # submitted, excluded, refused and missing cells; a blocked round; a live round
    full = study_dashboard(history.study).figures
    assert full["heatmap"]["data"][0]["text"] and full["sites"]["data"][0]["meta"] == "band:max"
    _assert_plotly_keeps(full)
    _assert_plotly_keeps(study_dashboard(history.study, disclosure=disclosure_for(p.site_a_admin, history.study))
                         .figures)


def test_the_empty_figures_of_a_new_study_are_ones_plotly_validates_and_keeps(p):
    figures = study_dashboard(three_site_study(p, third_site(p))).figures
    assert all(figure["layout"]["annotations"] for figure in figures.values()), "each chart says why it is empty"
    _assert_plotly_keeps(figures)
