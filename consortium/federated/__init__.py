"""The Django-free core that the coordinator and the site agent share: the wire format (safetensors codec),
the model zoo, the federated metrics, the update norm, and the DP accountant (the gate's budget check).
Imports nothing above it (no Django, no app)."""
