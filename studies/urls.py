from django.urls import path

from studies.views import actions, pages

app_name = "studies"

urlpatterns = [
    path("", pages.study_list, name="list"),
    path("new/", pages.study_create, name="create"),
    path("<int:pk>/", pages.study_detail, name="detail"),
    path("<int:pk>/approve/", pages.study_approval, name="approval"),
    path("<int:pk>/edit/", pages.study_edit, name="edit"),
    path("<int:pk>/agreement/", pages.agreement_publish, name="agreement"),
    path("<int:pk>/dpia/", pages.dpia_page, name="dpia"),
    path("<int:pk>/actions/<slug:action>/", actions.study_action, name="action"),
    path(
        "<int:pk>/participations/<int:participation_pk>/<slug:action>/",
        actions.participation_action,
        name="participation-action",
    ),
]
