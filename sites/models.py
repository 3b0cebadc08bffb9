"""Hospital sites and the people who administer them."""

import zoneinfo

from django.core.exceptions import ValidationError
from django.db import models
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
        permissions = [("administer_site", "Administer this site (sign agreements, grant participation)")]

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
