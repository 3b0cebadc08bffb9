from django.urls import path

from consortium.audit import views as audit_views
from consortium.pages import home, overview, sites

# The pages that span apps, and the audit log's. The site admin's other pages are in sites/urls.py.
urlpatterns = [
    path("", home.home, name="home"),
    path("overview/", overview.overview_page, name="overview"),
    path("audit/", audit_views.audit_log, name="audit-log"),
    path("audit/export.csv", audit_views.audit_export, name="audit-export"),
    path("sites/<id:pk>/", sites.site_detail, name="site-detail"),
]
