from django.urls import path

from consortium import views

urlpatterns = [
    path("", views.home, name="home"),
]
