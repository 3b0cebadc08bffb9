from django.urls import path

from sites import flower_views, views

# Mounted at /sites/. The site page itself (/sites/<pk>/) spans apps: consortium/web_urls.py routes it.
urlpatterns = [
    path("", views.sites_list, name="site-list"),
    path("<id:pk>/agent-tokens/", views.site_agent_token_create, name="site-agent-token-create"),
    path("<id:pk>/agent-tokens/<id:token_pk>/revoke/", views.site_agent_token_revoke, name="site-agent-token-revoke"),
    path("<id:pk>/flower-nodes/", flower_views.site_flower_node_register, name="site-flower-node-register"),
    path("<id:pk>/flower-nodes/<id:node_pk>/revoke/", flower_views.site_flower_node_revoke,
         name="site-flower-node-revoke"),
]
