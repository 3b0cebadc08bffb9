"""A site's Flower SuperNodes: its admins register each node's public key (Flower's node authentication)
and revoke it, audited like agent tokens; the Flower coordinator's questions ("which site is this node?")
are answered from the live keys."""

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from consortium.locks import locked
from sites.audit_actions import SiteAction
from sites.flower_keys import InvalidNodeKey, read_public_key
from sites.models import FlowerNode, Site
from sites.permissions import can_administer, sites_for
from sites.selectors import User


def _require_site_admin(actor: AbstractBaseUser, site: Site, doing: str) -> None:
    if can_administer(actor, site):
        return
    if sites_for(actor, "view").filter(pk=site.pk).exists():
        raise Forbidden(f"Only an admin of {site} may {doing}.", site=site)
    raise NotFound("No such site.")


@audited_service(SiteAction.FLOWER_NODE_REGISTER)
def flower_node_register(*, actor: AbstractBaseUser, site: Site, name: str, public_key: str) -> FlowerNode:
    """Register the public key of one of the site's Flower SuperNodes: from now on a node authenticated with
    it acts for this site in Flower-run studies (and only when the gate lets the site take part)."""
    found = locked(Site.objects.filter(pk=site.pk)).first()
    if found is None:
        raise NotFound("No such site.")
    _require_site_admin(actor, found, "register its Flower nodes")
    name = name.strip()
    if not name:
        raise ValidationFailed("Give the node a name that says where it runs, e.g. 'Flower box in radiology'.",
                               site=found)
    try:
        key = read_public_key(public_key)
    except InvalidNodeKey as exc:
        raise ValidationFailed(str(exc), site=found) from None
    if FlowerNode.objects.filter(fingerprint=key.fingerprint, revoked_at__isnull=True).exists():
        # Which site holds it is not said: another site's keys are not this admin's business.
        raise Conflict("This public key is already registered; every SuperNode needs its own key pair.", site=found)
    node = FlowerNode(site=found, name=name, public_key=key.pem, fingerprint=key.fingerprint, created_by=actor)
    node.full_clean()
    node.save()
    record(actor=actor, action=SiteAction.FLOWER_NODE_REGISTERED, target=node, site=found,
           details={"name": node.name, "fingerprint": node.fingerprint})
    return node


@audited_service(SiteAction.FLOWER_NODE_REVOKE)
def flower_node_revoke(*, actor: AbstractBaseUser, node: FlowerNode, reason: str) -> FlowerNode:
    """Revoke a node's key for good: from the next question the coordinator asks, the node acts for no site."""
    found = locked(FlowerNode.objects.select_related("site").filter(pk=node.pk), of=("self",)).first()
    if found is None or not can_administer(actor, found.site):
        raise NotFound("No such Flower node.")
    if found.is_revoked:
        raise InvalidTransition(f"The Flower node {found} was already revoked.", site=found.site, target=found)
    if not reason.strip():
        raise ValidationFailed("Give a reason for revoking the node.", site=found.site, target=found)
    found.revoked_at, found.revoked_by, found.revoke_reason = timezone.now(), actor, reason.strip()
    found.full_clean()
    found.save()
    record(actor=actor, action=SiteAction.FLOWER_NODE_REVOKED, target=found, site=found.site,
           details={"name": found.name, "fingerprint": found.fingerprint, "reason": found.revoke_reason})
    return found


def site_flower_nodes(user: User, site: Site) -> list[FlowerNode]:
    """The site's Flower nodes, newest first, for its admins (others: Forbidden if they see the site, else
    NotFound)."""
    if not can_administer(user, site):
        if sites_for(user, "view").filter(pk=site.pk).exists():
            raise Forbidden(f"Only the admins of {site} see its Flower nodes.", site=site)
        raise NotFound("No such site.")
    return list(FlowerNode.objects.filter(site=site).select_related("site", "created_by", "revoked_by"))


def flower_node_get(user: User, pk: int) -> FlowerNode:
    """The node if the user administers its site; otherwise NotFound, as if it did not exist."""
    node = FlowerNode.objects.filter(pk=pk, site__in=sites_for(user, "administer")).select_related("site").first()
    if node is None:
        raise NotFound("No such Flower node.")
    return node


def live_nodes_by_fingerprint(fingerprints: Iterable[str]) -> QuerySet[FlowerNode]:
    """The live registered keys among `fingerprints`, with their sites (one query)."""
    return FlowerNode.objects.filter(fingerprint__in=list(fingerprints), revoked_at__isnull=True).select_related("site")
