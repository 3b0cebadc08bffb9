"""A Flower app training Consortium's demo model (logistic regression on the breast cancer data), governed by
Consortium: the only Consortium-specific line is the `GovernedStrategy` wrapping FedAvg in `server_app`."""
