"""The audit log, an app of its own at the bottom of the app order (label "consortium").

Append-only and hash-chained: `log.record` appends an event inside the caller's transaction, `log.verify_chain`
recomputes the chain (`manage.py verify_audit`), `exports` writes and checks CSV exports. Also here: who may
read the log (`permissions`), the audited reads and role changes every app reports (`services`), and the
audit log's page, API and admin. It imports no app above it (sites, studies, aggregation, the pages).
"""
