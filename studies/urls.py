from django.urls import path

from studies.views import actions, pages

app_name = "studies"

urlpatterns = [
    path("", pages.study_list, name="list"),
    path("new/", pages.study_create, name="create"),
    path("<id:pk>/", pages.study_detail, name="detail"),
    path("<id:pk>/approve/", pages.study_approval, name="approval"),
    path("<id:pk>/edit/", pages.study_edit, name="edit"),
    path("<id:pk>/agreement/", pages.agreement_publish, name="agreement"),
    path("<id:pk>/dpia/", pages.dpia_page, name="dpia"),
    path("<id:pk>/sites/<id:site_pk>/protocol-review/", pages.protocol_review, name="protocol-review"),
    path("<id:pk>/actions/<slug:action>/", actions.study_action, name="action"),
    path(
        "<id:pk>/participations/<id:participation_pk>/<slug:action>/",
        actions.participation_action,
        name="participation-action",
    ),
]
