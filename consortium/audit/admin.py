"""Django admin for what spans the consortium: users and their roles, and the audit log (read-only).

The consortium admin manages users and roles (groups) here. Governed models are shown
read-only everywhere in the admin: their writes go through the services, which check
permission and state and write the audit event [ZU "raw saves"].
"""

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from consortium.audit.forms import ConsortiumUserChangeForm, ConsortiumUserCreationForm
from consortium.audit.models import AuditEvent
from consortium.audit.services import audit_log_read, group_names, user_roles_changed
from consortium.logins import AdminLoginForm
from consortium.roles import Role

User = get_user_model()

admin.site.site_header = "Consortium administration"
admin.site.site_title = "Consortium admin"
admin.site.index_title = "Sites, users and roles; governed records (read-only)"
admin.site.login_form = AdminLoginForm  # throttled like every login, and each refusal audited


class ReadOnlyAdmin(admin.ModelAdmin):
    """Look, filter and search; never add, change or delete. Change views render read-only and refuse POST."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The hash-chained audit log. Append-only: the model, the admin and (on PostgreSQL) a trigger refuse edits."""

    list_display = ("seq", "created_at", "actor_label", "action", "outcome", "object_repr", "study_id", "site_id")
    list_filter = ("outcome", "actor_kind", "created_at")
    search_fields = ("action", "actor_label", "object_repr", "object_id")
    date_hierarchy = "created_at"
    ordering = ("-seq",)
    list_per_page = 100
    show_full_result_count = False  # counting a long log on every page is slow; the chain's length is in verify_audit

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None):
        # "Who saw what" includes the audit log itself, whichever page it is read through.
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if request.method == "GET" and response.status_code == 200 and changelist is not None:
            audit_log_read(actor=request.user, via="admin_viewed", filters=dict(request.GET.items()),
                           count=len(changelist.result_list))
        return response


admin.site.unregister(User)


@admin.register(User)
class ConsortiumUserAdmin(UserAdmin):
    """Django's user admin, plus an audit event whenever a user's roles (groups) change; a new username
    may not start like a spreadsheet formula."""

    add_form = ConsortiumUserCreationForm
    form = ConsortiumUserChangeForm
    list_display = ("username", "first_name", "last_name", "email", "roles", "is_active", "is_staff")

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="Roles")
    def roles(self, user: Any) -> str:
        return ", ".join(sorted(group.name for group in user.groups.all()))

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        # The admin's change view runs in one transaction, so the event commits with the change.
        user = form.instance
        before = list(user.groups.values_list("name", flat=True)) if change else []
        super().save_related(request, form, formsets, change)
        after = list(user.groups.values_list("name", flat=True))
        user.__dict__.pop("_consortium_roles", None)
        user_roles_changed(actor=request.user, user=user, before=before, after=after, via="admin")


admin.site.unregister(Group)


@admin.register(Group)
class RoleGroupAdmin(GroupAdmin):
    """Role groups are the roles themselves: renaming or deleting one would silently take a role away
    from everyone holding it, so their names are fixed and they cannot be deleted. Renaming or deleting
    another group changes its members' groups, so each member gets a `roles_changed` event."""

    def get_readonly_fields(self, request: HttpRequest, obj: Group | None = None) -> tuple[str, ...]:
        if obj is not None and obj.name in Role.values:
            return ("name",)
        return ()

    def has_delete_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        if obj is not None and obj.name in Role.values:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Group, form: ModelForm, change: bool) -> None:
        # The change view runs in one transaction, so the events commit with the rename.
        old_name = Group.objects.filter(pk=obj.pk).values_list("name", flat=True).first() if change else None
        super().save_model(request, obj, form, change)
        if old_name is not None and old_name != obj.name:
            for user in obj.user_set.all():
                after = group_names(user)
                before = [old_name if name == obj.name else name for name in after]
                user_roles_changed(actor=request.user, user=user, before=before, after=after, via="admin:group")

    def delete_model(self, request: HttpRequest, obj: Group) -> None:
        self.delete_queryset(request, Group.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Group]) -> None:
        # The bulk "delete selected" action runs outside the admin's transaction: take one here.
        with transaction.atomic():
            members = list(User.objects.filter(groups__in=queryset).distinct())
            before = {user.pk: group_names(user) for user in members}
            super().delete_queryset(request, queryset)
            for user in members:
                user_roles_changed(actor=request.user, user=user, before=before[user.pk], after=group_names(user),
                                   via="admin:group")
