from django.urls import path

from marketplace.api import views

urlpatterns = [
    path("me", views.MeView.as_view(), name="me"),
]
