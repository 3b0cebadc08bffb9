"""The ServerApp: FedAvg, wrapped so that Consortium's gate decides who takes part in each round."""

import os

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from aggregation.flower import GovernedStrategy
from consortium.federated import zoo

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=int(config["min-nodes"]),
                    min_available_nodes=int(config["min-nodes"]))
    # The one change an existing Flower app needs: wrap its strategy.
    strategy = GovernedStrategy(fedavg, server=str(config["consortium-server"]),
                                token=os.environ["CONSORTIUM_FLOWER_TOKEN"], study=int(config["consortium-study"]),
                                wait_for_nodes=int(config["wait-for-nodes"]))
    initial = zoo.initial_state("logistic_regression", 30, seed=0)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=int(config["num-server-rounds"]))
