"""The Django project and what spans the consortium.

Importing this package loads nothing else: `python -m consortium.verify` must run on an auditor's
laptop without Django or Celery. The Celery app is loaded by `ConsortiumConfig.ready()` (so every
Django process, `shared_task` included, uses it) and found by `celery -A consortium` as `consortium.celery`.
"""
