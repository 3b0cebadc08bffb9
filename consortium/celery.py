"""The Celery app. Broker from settings: kombu's filesystem transport by default, Redis with REDIS_URL."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "consortium.settings")

# DjangoTask adds delay_on_commit: services enqueue only once their transaction commits.
app = Celery("consortium", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
