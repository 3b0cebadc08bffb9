from django.urls import path

from sites import views

# Mounted at /sites/. The site page itself (/sites/<pk>/) spans apps: consortium/web_urls.py routes it.
urlpatterns = [
    path("", views.sites_list, name="site-list"),
    path("<id:pk>/agent-tokens/", views.site_agent_token_create, name="site-agent-token-create"),
    path("<id:pk>/agent-tokens/<id:token_pk>/revoke/", views.site_agent_token_revoke, name="site-agent-token-revoke"),
]
