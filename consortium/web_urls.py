from django.urls import path

from aggregation.views import overview
from aggregation.views import sites as site_activity_views
from consortium import views
from studies.views import sites as site_views

urlpatterns = [
    path("", views.home, name="home"),
    # The overview spans every study and its rounds, so it lives in aggregation (the top of the app order).
    path("overview/", overview.overview_page, name="overview"),
    path("audit/", views.audit_log, name="audit-log"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
    # Site pages list participations (studies); see sites/urls.py for why they are routed here. The site page
    # itself also shows the site's round activity, so its view lives in aggregation.
    path("sites/", site_views.sites_list, name="site-list"),
    path("sites/<id:pk>/", site_activity_views.site_detail, name="site-detail"),
    path("sites/<id:pk>/agent-tokens/", site_views.site_agent_token_create, name="site-agent-token-create"),
    path("sites/<id:pk>/agent-tokens/<id:token_pk>/revoke/", site_views.site_agent_token_revoke,
         name="site-agent-token-revoke"),
    path("sites/<id:pk>/agent-tokens/<id:token_pk>/rotate/", site_views.site_agent_token_rotate,
         name="site-agent-token-rotate"),
]
