"""Pages of the aggregation app: rounds and model versions, the live study dashboard, the consortium overview."""
