"""The ClientApp each hospital's SuperNode runs: local training on the site's own CSV (`--node-config
'data="/path/site_amc.csv"'`), with the same training code as Consortium's own site agent."""

import math
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from sites.agent.data import Dataset, load_csv, split
from sites.agent.demo_data import DEMO_PROTOCOL
from sites.agent.training import Protocol, local_update

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    protocol = Protocol.from_json({**DEMO_PROTOCOL, "local_epochs": int(context.run_config["local-epochs"])})
    rows = _standardized(load_csv(str(context.node_config["data"]), protocol.label_column))
    train_set, val_set = split(rows, 0.2, seed=0)
    server_round = int(msg.content["config"]["server-round"])
    update = local_update(protocol, msg.content["arrays"].to_torch_state_dict(), train_set, val_set,
                          seed=server_round)
    metrics = {"num-examples": update.num_examples, **_numbers(update.metrics)}
    return Message(RecordDict({"arrays": ArrayRecord(update.state), "metrics": MetricRecord(metrics)}), reply_to=msg)


def _standardized(rows: Dataset) -> Dataset:
    """Features scaled with the site's own mean and standard deviation (no statistics leave the site)."""
    std = rows.x.std(axis=0)
    return Dataset(features=rows.features, x=(rows.x - rows.x.mean(axis=0)) / np.where(std > 0, std, 1.0), y=rows.y)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(value)}
