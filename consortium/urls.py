from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from consortium.api import SchemaApi, SwaggerApi
from consortium.content_policy import allow_inline_styles
from consortium.logins import LoginView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SchemaApi.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file: the Content-Security-Policy allows no inline script.
    path("api/docs/", allow_inline_styles(SwaggerApi.as_view(url_name="api-schema")), name="api-docs"),
    path("api/", include("consortium.api_urls")),
    path("studies/", include("studies.urls")),
    path("studies/<id:pk>/", include("aggregation.urls")),
    path("sites/", include("sites.urls")),
    path("", include("consortium.web_urls")),
]

# Errors Django answers before (or instead of) a view: JSON for /api/ paths, pages elsewhere.
handler400 = "consortium.pages.errors.bad_request"
handler404 = "consortium.pages.errors.page_not_found"
handler500 = "consortium.pages.errors.server_error"
