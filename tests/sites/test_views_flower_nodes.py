"""The Flower SuperNodes section of the site page: its admins register a SuperNode's public key and revoke
it; nobody else sees or touches them."""

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.urls import reverse

from sites.models import FlowerNode
from tests.pages import client_for, page
from tests.support import actions_after, last_seq


def _openssh() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def register(user, site, public_key: str, name: str = "Flower box"):
    return client_for(user).post(reverse("site-flower-node-register", args=[site.pk]),
                                 {"name": name, "public_key": public_key}, follow=True)


def test_a_site_admin_registers_and_revokes_a_supernode_on_the_site_page(p):
    mark = last_seq()
    body = page(register(p.site_a_admin, p.site_a, _openssh()))
    node = FlowerNode.objects.get()
    # The redirect shows the site page again, whose reading is recorded too.
    assert actions_after(mark) == ["sites.flower_node.registered", "sites.site.viewed"]
    assert "Flower SuperNodes" in body and "Flower box" in body and node.fingerprint[:16] in body
    client_for(p.site_a_admin).post(reverse("site-flower-node-revoke", args=[p.site_a.pk, node.pk]),
                                    {"reason": "Machine replaced"})
    node.refresh_from_db()
    assert node.is_revoked and node.revoke_reason == "Machine replaced"


def test_it_shows_an_unreadable_key_as_an_error_and_stores_nothing(p):
    body = page(register(p.site_a_admin, p.site_a, "ssh-rsa AAAA"))
    assert "not a readable public key" in body and not FlowerNode.objects.exists()


def test_nobody_else_sees_or_touches_the_sites_supernodes(p):
    register(p.site_a_admin, p.site_a, _openssh())
    node = FlowerNode.objects.get()
    assert "Flower SuperNodes" not in page(client_for(p.pi).get(reverse("site-detail", args=[p.site_a.pk])))
    assert register(p.site_b_admin, p.site_a, _openssh()).status_code == 404
    response = client_for(p.site_b_admin).post(reverse("site-flower-node-revoke", args=[p.site_a.pk, node.pk]),
                                               {"reason": "x"})
    assert response.status_code == 404 and not FlowerNode.objects.get().is_revoked
