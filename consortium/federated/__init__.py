"""The Django-free core that the coordinator and the site agent share: the wire format (safetensors codec),
the model zoo, the federated metrics and the update norm. Imports nothing above it (no Django, no app)."""
