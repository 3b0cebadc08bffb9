"""The protocol hash, shared by the coordinator (which binds approvals to it) and the site agent (which checks
that the protocol it is sent is the one its site accepted). Imports no Django."""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Protocol fields added after studies were first approved, with the value every earlier protocol implicitly had.
# Such a field enters the hash only once it differs from that value, so adding a field to the product does not
# void every approval given before it existed; changing it on a study does, like any protocol edit.
# Before the protocol carried a privacy target, delta was a setting (1e-5) and nothing was enforced.
LATER_PROTOCOL_FIELDS: dict[str, Any] = {"max_update_norm": 1e4, "secure_aggregation": False, "dp_target_epsilon": None,
                                         "dp_delta": 1e-5, "disclosure_min_sites": 3,
                                         "feature_names": []}


def protocol_hash(protocol: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of the protocol (sorted keys, no spaces)."""
    hashed = {name: value for name, value in protocol.items()
              if name not in LATER_PROTOCOL_FIELDS or value != LATER_PROTOCOL_FIELDS[name]}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
