from django.urls import path

from accounts.api import views

urlpatterns = [
    path("tokens", views.ApiTokenListView.as_view(), name="api-tokens"),
    path("tokens/<int:token_id>", views.ApiTokenView.as_view(), name="api-token"),
]
