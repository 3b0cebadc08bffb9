"""A site's Flower SuperNode keys: its admins register and revoke them, audited; a key is read as OpenSSH or
PEM into one fingerprint, and one live key belongs to one site."""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from consortium.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from sites.flower_keys import InvalidNodeKey, read_public_key
from sites.flower_nodes import flower_node_register, flower_node_revoke, live_nodes_by_fingerprint
from tests.support import last_seq, only_event, refused


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP384R1()).public_key()


def _openssh(key) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _pem(key) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_it_reads_the_openssh_and_pem_forms_of_a_key_as_the_same_key():
    key = _key()
    assert read_public_key(_openssh(key)) == read_public_key(_pem(key))
    assert read_public_key(_openssh(key)).pem == _pem(key)


@pytest.mark.parametrize("text", ["", "ssh-rsa AAAA", "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"])
def test_it_refuses_what_is_not_a_public_key(text):
    with pytest.raises(InvalidNodeKey):
        read_public_key(text)


def test_it_refuses_keys_flower_does_not_take():
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(InvalidNodeKey, match="NIST"):
        read_public_key(_openssh(ed))


def test_a_site_admin_registers_a_supernode_key_audited(p):
    key, mark = _key(), last_seq()
    node = flower_node_register(actor=p.site_a_admin, site=p.site_a, name=" Flower box ", public_key=_openssh(key))
    assert (node.site, node.name, node.public_key) == (p.site_a, "Flower box", _pem(key))
    event = only_event(mark, "sites.flower_node.registered")
    assert event.details == {"name": "Flower box", "fingerprint": node.fingerprint}
    assert list(live_nodes_by_fingerprint([node.fingerprint])) == [node]


def test_it_refuses_a_key_already_registered_even_by_another_site(p):
    key = _key()
    flower_node_register(actor=p.site_a_admin, site=p.site_a, name="A", public_key=_openssh(key))
    with refused(Conflict, "already registered", action="sites.flower_node.register"):
        flower_node_register(actor=p.site_b_admin, site=p.site_b, name="B", public_key=_pem(key))


def test_it_refuses_another_sites_admin_as_if_the_site_did_not_exist(p):
    with refused(NotFound, "No such site", action="sites.flower_node.register"):
        flower_node_register(actor=p.site_b_admin, site=p.site_a, name="Not mine", public_key=_openssh(_key()))


def test_it_refuses_an_unreadable_key_with_the_reason(p):
    with refused(ValidationFailed, "NIST", action="sites.flower_node.register"):
        flower_node_register(actor=p.site_a_admin, site=p.site_a, name="Box",
                             public_key=_openssh(ed25519.Ed25519PrivateKey.generate().public_key()))


def test_a_revoked_key_acts_for_no_site_and_may_be_registered_again(p):
    key = _key()
    node = flower_node_register(actor=p.site_a_admin, site=p.site_a, name="A", public_key=_openssh(key))
    mark = last_seq()
    flower_node_revoke(actor=p.site_a_admin, node=node, reason="Machine replaced")
    assert only_event(mark, "sites.flower_node.revoked").details["reason"] == "Machine replaced"
    assert not live_nodes_by_fingerprint([node.fingerprint]).exists()
    with refused(InvalidTransition, "already revoked", action="sites.flower_node.revoke"):
        flower_node_revoke(actor=p.site_a_admin, node=node, reason="Again")
    flower_node_register(actor=p.site_a_admin, site=p.site_a, name="A again", public_key=_openssh(key))
