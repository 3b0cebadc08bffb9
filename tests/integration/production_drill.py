"""Helper of test_production_topology (a child process on the topology's database, Django set up from the
environment): `prepare FEATURES` brings a large-model round to aggregating and prints its id; `reference ROUND`
prints the SHA-256 of that round's FedAvg computed here from the stored updates, uninterrupted; `state ROUND`
prints the round's status, its number of model versions and the version's SHA-256 as JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    django.setup()
    command, argument = sys.argv[1], int(sys.argv[2])
    if command == "prepare":
        spec = importlib.util.spec_from_file_location("worker_recovery", ROOT / "bench" / "worker_recovery.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        print(bench._prepare(argument))
    elif command == "reference":
        print(_reference(argument))
    else:
        from aggregation.models import ModelVersion, Round

        versions = list(ModelVersion.objects.filter(round_id=argument))
        print(json.dumps({"status": Round.objects.get(pk=argument).status, "versions": len(versions),
                          "sha256": versions[0].sha256 if versions else None}))


def _reference(round_id: int) -> str:
    from aggregation import strategies
    from aggregation.models import Round
    from aggregation.services.aggregate import _strategy_settings
    from aggregation.storage import absolute, version_tensors
    from consortium.federated import codec

    round_ = Round.objects.select_related("study", "base_version").get(pk=round_id)
    pairs = [(codec.LazyTensors(absolute(u.path)), float(u.num_examples)) for u in round_.updates.all()]
    weights = strategies.aggregate(round_.study.strategy, version_tensors(round_.base_version), pairs, {},
                                   _strategy_settings(round_.study)).weights
    return codec.sha256_hex(codec.encode(weights))


if __name__ == "__main__":
    main()
