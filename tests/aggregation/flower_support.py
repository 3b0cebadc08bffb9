"""Flower rounds in tests: a study's coordinator, SuperNode keys registered by the site admins, and the results
a Flower strategy would report."""

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aggregation.flower_auth import FlowerCoordinator
from aggregation.models import Round
from aggregation.services.flower import flower_initial_version, flower_token_create
from consortium.federated import codec
from consortium.federated.norm import delta_norm, l2_norm
from sites.flower_nodes import flower_node_register
from sites.models import Site
from tests.aggregation.support import base_tensors, update_tensors
from tests.base import Personas


def node_key() -> tuple[str, str]:
    """A SuperNode key pair's public half, as OpenSSH (what the site admin pastes) and as PEM (what the SuperLink
    reports to the ServerApp)."""
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    return (public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode(),
            public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def register_node(p: Personas, site: Site, admin=None) -> str:
    """Register a new SuperNode key for `site` by its admin; returns the PEM the SuperLink would report."""
    openssh, pem = node_key()
    flower_node_register(actor=admin or p.site_admin_of(site), site=site, name=f"SuperNode of {site.code}",
                         public_key=openssh)
    return pem


def coordinator(p: Personas, study) -> FlowerCoordinator:
    token, _ = flower_token_create(actor=p.pi, study=study, name="SuperLink")
    return FlowerCoordinator(token)


def initial(actor: FlowerCoordinator, study) -> str:
    """The Flower app's initial parameters recorded as v0 (the study's own initial model); their SHA-256."""
    from consortium.federated import zoo

    tensors = zoo.initial_state(study.model_kind, study.num_features, study.hidden_units, seed=0)
    return flower_initial_version(actor=actor, body=codec.encode(tensors)).sha256


def result(round_: Round, node_id: int, *, seed: int = 1, num_examples: int = 50) -> dict:
    tensors = update_tensors(round_, seed=seed)
    data = codec.encode(tensors)
    return {"node_id": node_id, "num_examples": num_examples, "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data), "weight_norm": l2_norm(tensors),
            "delta_norm": delta_norm(base_tensors(round_), tensors), "metrics": {"train_loss": 0.5}}
