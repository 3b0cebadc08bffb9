"""Hospital sites and the people who administer them."""

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone (for example Europe/Amsterdam).")


class Site(models.Model):
    """A hospital (or other data holder) that may take part in studies. Its data never leaves it."""

    name = models.CharField(max_length=200, unique=True)
    code = models.SlugField(max_length=40, unique=True, help_text="Short identifier, e.g. 'amc'.")
    city = models.CharField(max_length=100, blank=True)
    country = models.CharField(max_length=100, blank=True)
    timezone = models.CharField(
        max_length=64,
        default="Europe/Amsterdam",
        validators=[validate_timezone],
        help_text="Local dates the site enters (e.g. ethics approval expiry) are read in this zone.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [("administer_site", "Administer this site (grant participation, agent tokens)"),
                       ("sign_agreements", "Hold signing authority: sign data use agreements for this site")]

    def __str__(self) -> str:
        return self.name

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class SiteUserObjectPermission(UserObjectPermissionBase):
    """Direct-FK guardian table: per-site rights of a user (faster than the generic one)."""

    content_object = models.ForeignKey(Site, on_delete=models.CASCADE)


class SiteGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Site, on_delete=models.CASCADE)


class Revocable(models.Model):
    """A credential revoked for good: when, by whom and why are recorded together, or not at all
    (`revocation_complete`). Revocation takes effect on the credential's next use."""

    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoke_reason = models.TextField(blank=True)

    class Meta:
        abstract = True

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


def revocation_complete(name: str, what: str) -> models.CheckConstraint:
    """The check that a revoked credential records who revoked it, when and why (and a live one none of it)."""
    return models.CheckConstraint(
        condition=(
            models.Q(revoked_at__isnull=True, revoked_by__isnull=True, revoke_reason="")
            | (models.Q(revoked_at__isnull=False, revoked_by__isnull=False) & ~models.Q(revoke_reason=""))
        ),
        name=name,
        violation_error_message=f"A revoked {what} records who revoked it, when and why.",
    )


class AgentToken(Revocable):
    """A credential the site agent of one hospital presents as `Authorization: Bearer cst_<prefix>_<secret>`.

    Only the SHA-256 of the secret is stored: the secret is 32 random bytes from `secrets`, so a fast
    hash cannot be brute-forced, and the plaintext is shown once, to the admin who created it. The
    prefix is not secret: it finds the row and tells tokens apart on pages and in the audit log.
    Revocation is final and takes effect on the agent's next request.
    """

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="agent_tokens")
    name = models.CharField(max_length=100, help_text="What the admin calls it, e.g. 'GPU box in radiology'.")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False, help_text="SHA-256 (hex) of the secret.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="Last use, to the minute.")
    expires_at = models.DateTimeField(help_text="From this moment the token is refused (a rotation brings it "
                                                "forward, to the end of the overlap with the new token).")

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            revocation_complete("agent_token_revocation_complete", "token"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()

class FlowerNode(Revocable):
    """The public key of a site's Flower SuperNode (Flower's node authentication), registered by the site's
    admin like an agent token: a Flower node whose key is registered here acts for this site, and for no other.

    The key is stored as its canonical PEM (SubjectPublicKeyInfo, as the SuperLink stores it) with the
    SHA-256 of its DER encoding, which finds it. Revocation is final; a live key belongs to one site only."""

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="flower_nodes")
    name = models.CharField(max_length=100, help_text="What the admin calls it, e.g. 'Flower box in radiology'.")
    public_key = models.TextField(editable=False, help_text="PEM, SubjectPublicKeyInfo.")
    fingerprint = models.CharField(max_length=64, editable=False, help_text="SHA-256 (hex) of the DER public key.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["fingerprint"], condition=models.Q(revoked_at__isnull=True),
                                    name="flower_node_one_live_key",
                                    violation_error_message="This public key is already registered."),
            revocation_complete("flower_node_revocation_complete", "key"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint[:12]})"
