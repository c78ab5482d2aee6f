from django.urls import path

from previews.api import views

urlpatterns = [
    path("skus/<slug:slug>/previews", views.PreviewCreateView.as_view(), name="preview-create"),
    path("previews/<uuid:preview_id>", views.PreviewDetailView.as_view(), name="preview-detail"),
]
