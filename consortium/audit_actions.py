"""The audit log's action names of consortium (`consortium.audit.record(action=...)`), each typed once.

Values never change: the hash-chained log, its exports and the auditors' filters hold them. An attempt is
named by its verb (`...submit`), what it recorded by its outcome (`...submitted`)."""


class ConsortiumAction:
    API_NOT_FOUND = "consortium.api.not_found"
    API_TOKEN_ISSUED = "consortium.api_token.issued"
    API_TOKEN_REISSUED = "consortium.api_token.reissued"
    # Reads of the audit log itself, named "consortium.audit.<via>" by where they came from
    # (`consortium.services.audit_log_read`).
    AUDIT_ADMIN_VIEWED = "consortium.audit.admin_viewed"
    AUDIT_API_EXPORTED = "consortium.audit.api_exported"
    AUDIT_API_VIEWED = "consortium.audit.api_viewed"
    AUDIT_EXPORTED = "consortium.audit.exported"
    AUDIT_VIEWED = "consortium.audit.viewed"
    LOGIN_FAILED = "consortium.login.failed"
    LOGIN_LOCKED_OUT = "consortium.login.locked_out"
    OVERVIEW_VIEWED = "consortium.overview.viewed"
    USER_ROLES_CHANGED = "consortium.user.roles_changed"
