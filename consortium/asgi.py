"""ASGI entry point: Django for HTTP, Channels for the dashboards' websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "consortium.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.db import database_sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from aggregation.services.uploads import upload_refused  # noqa: E402
from consortium.request_limits import RequestTargetLimit, answer_overlong_request_lines  # noqa: E402
from consortium.upload_limit import UploadSizeLimit  # noqa: E402
from studies.consumers import StudyEventsConsumer  # noqa: E402

websocket_urlpatterns = [
    path("ws/studies/<id:study_id>/", StudyEventsConsumer.as_asgi()),
]

# Under daphne, an over-long request line gets a 414 instead of a dropped connection.
answer_overlong_request_lines()

application = ProtocolTypeRouter(
    {
        "http": RequestTargetLimit(UploadSizeLimit(django_asgi_app, limit=settings.MAX_UPDATE_BYTES,
                                                   prefix="/api/agent/",
                                                   on_refused=database_sync_to_async(upload_refused))),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
