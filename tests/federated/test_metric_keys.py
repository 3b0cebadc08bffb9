"""One set of metric names: what the agent reports is what the server checks and the dashboard's JavaScript reads."""

import re
from pathlib import Path

import numpy as np

from consortium.federated import metric_keys
from consortium.federated.metric_keys import BASE, EVALUATION_METRICS, GLOBAL_METRICS, SCORE_HISTOGRAM, UPDATE_METRICS
from sites.agent.data import Dataset
from sites.agent.demo_data import DEMO_PROTOCOL
from sites.agent.training import Protocol, local_update

DASHBOARD_JS = Path(__file__).resolve().parents[2] / "static" / "js" / "dashboard.js"
NAMES = {value for name, value in vars(metric_keys).items() if name.isupper() and isinstance(value, str)}


def test_the_dashboard_script_reads_only_metric_names_defined_in_the_shared_core():
    script = DASHBOARD_JS.read_text()
    read = set(re.findall(r"\b(val_[a-z_]+|train_loss|training_seconds)\b", script))
    assert read and read <= NAMES, sorted(read - NAMES)


def test_the_dashboard_script_draws_the_global_metrics_of_the_shared_core_in_its_order():
    [listed] = re.findall(r"const GLOBAL_METRICS = \[([^\]]*)\];", DASHBOARD_JS.read_text())
    assert tuple(re.findall(r'"([a-z_]+)"', listed)) == GLOBAL_METRICS


def test_the_agent_reports_exactly_the_update_and_evaluation_metrics():
    protocol = Protocol.from_json(DEMO_PROTOCOL)
    x = np.random.default_rng(0).normal(size=(40, protocol.num_features))
    rows = Dataset(features=[f"f{i}" for i in range(protocol.num_features)], x=x, y=(np.arange(40) % 2) * 1.0)
    update = local_update(protocol, protocol.initial_state(), rows, rows, seed=0)
    assert set(update.metrics) == {*UPDATE_METRICS, BASE}
    assert set(update.metrics[BASE]) == {*EVALUATION_METRICS, SCORE_HISTOGRAM}
    assert set(GLOBAL_METRICS) <= set(EVALUATION_METRICS) <= set(UPDATE_METRICS)
