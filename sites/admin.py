"""Django admin for sites: the consortium admin registers hospitals and appoints their admins.

Every write goes through `sites.services` with the logged-in user as the actor, so each one
is permission-checked and audited like any other; sites are never deleted here (their
participations, signatures and audit trail refer to them).
"""

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest

from consortium.audit.admin import ReadOnlyAdmin
from sites.models import AgentToken, Site, SiteUserObjectPermission
from sites.permissions import ADMINISTER_SITE, can_manage_sites
from sites.services import SITE_FIELDS, site_admin_assign, site_admin_remove, site_create, site_update

User = get_user_model()


def site_admins(site: Site) -> QuerySet:
    """The users holding the `administer_site` object permission on `site`."""
    return User.objects.filter(
        siteuserobjectpermission__content_object=site,
        siteuserobjectpermission__permission__codename=ADMINISTER_SITE,
    ).order_by("username")


class SiteAdminForm(forms.ModelForm):
    admins = forms.ModelMultipleChoiceField(
        queryset=User.objects.order_by("username"),
        required=False,
        widget=admin.widgets.FilteredSelectMultiple("admins", is_stacked=False),
        help_text="People who act for this site: sign agreements, record ethics approvals, grant or revoke "
                  "participation. They get the Site admin role.",
    )

    class Meta:
        model = Site
        fields = SITE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and "admins" not in self.initial:
            self.initial["admins"] = list(site_admins(self.instance))


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    """Sites are created and changed through `site_create` / `site_update`; admins through
    `site_admin_assign` / `site_admin_remove`."""

    form = SiteAdminForm
    list_display = ("name", "code", "city", "country", "timezone", "admin_names")
    search_fields = ("name", "code", "city", "country")
    list_filter = ("country",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Site]:
        grants = SiteUserObjectPermission.objects.filter(permission__codename=ADMINISTER_SITE).select_related("user")
        return super().get_queryset(request).prefetch_related(
            Prefetch("siteuserobjectpermission_set", queryset=grants, to_attr="admin_grants")
        )

    @admin.display(description="Admins")
    def admin_names(self, site: Site) -> str:
        return ", ".join(sorted(grant.user.get_username() for grant in site.admin_grants))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return can_manage_sites(request.user) or super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Site | None = None) -> bool:
        return can_manage_sites(request.user) or super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return can_manage_sites(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Site | None = None) -> bool:
        return can_manage_sites(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Site | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Site, form: forms.ModelForm, change: bool) -> None:
        values = {field: form.cleaned_data[field] for field in SITE_FIELDS}
        if not change:
            site = site_create(actor=request.user, **values)
            obj.pk, obj.created_at = site.pk, site.created_at
            obj._state.adding = False
            return
        changed = {field: value for field, value in values.items() if field in form.changed_data}
        if changed:
            site_update(actor=request.user, site=obj, **changed)

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        site: Site = form.instance
        current = set(site_admins(site))
        wanted = set(form.cleaned_data["admins"])
        for user in sorted(wanted - current, key=lambda u: u.get_username()):
            site_admin_assign(actor=request.user, site=site, user=user)
        for user in sorted(current - wanted, key=lambda u: u.get_username()):
            site_admin_remove(actor=request.user, site=site, user=user)


@admin.register(AgentToken)
class AgentTokenAdmin(ReadOnlyAdmin):
    """Agent tokens, read-only: site admins create and revoke them on the site page (or the API), through
    `agent_token_create` / `agent_token_revoke`. The secret was never stored; the hash is not shown either."""

    list_display = ("name", "site", "prefix", "created_by", "created_at", "last_seen_at", "revoked_at")
    list_filter = ("site", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix", "site__name", "site__code")
    list_select_related = ("site", "created_by")
    exclude = ("key_hash",)
