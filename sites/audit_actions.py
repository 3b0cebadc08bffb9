"""The audit log's action names of sites (`consortium.audit.record(action=...)`), each typed once.

Values never change: the hash-chained log, its exports and the auditors' filters hold them. An attempt is
named by its verb (`...submit`), what it recorded by its outcome (`...submitted`)."""


class SiteAction:
    ADMIN_ASSIGN = "sites.admin.assign"
    ADMIN_ASSIGNED = "sites.admin.assigned"
    ADMIN_REMOVE = "sites.admin.remove"
    ADMIN_REMOVED = "sites.admin.removed"
    AGENT_TOKEN_CREATE = "sites.agent_token.create"
    AGENT_TOKEN_CREATED = "sites.agent_token.created"
    AGENT_TOKEN_LIST = "sites.agent_token.list"
    AGENT_TOKEN_REVOKE = "sites.agent_token.revoke"
    AGENT_TOKEN_REVOKED = "sites.agent_token.revoked"
    SITE_CREATE = "sites.site.create"
    SITE_CREATED = "sites.site.created"
    SITE_UPDATE = "sites.site.update"
    SITE_UPDATED = "sites.site.updated"
    SITE_VIEW = "sites.site.view"
    SITE_VIEWED = "sites.site.viewed"
