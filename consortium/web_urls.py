from django.urls import path

from consortium import views
from studies.views import sites as site_views

urlpatterns = [
    path("", views.home, name="home"),
    path("audit/", views.audit_log, name="audit-log"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
    # Site pages list participations (studies); see sites/urls.py for why they are routed here.
    path("sites/", site_views.sites_list, name="site-list"),
    path("sites/<int:pk>/", site_views.site_detail, name="site-detail"),
]
