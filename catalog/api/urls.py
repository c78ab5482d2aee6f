from django.urls import path

from catalog.api import views

urlpatterns = [
    path("skus", views.SkuListView.as_view(), name="sku-list"),
    path("skus/<slug:slug>", views.SkuDetailView.as_view(), name="sku-detail"),
    path("categories", views.CategoryListView.as_view(), name="category-list"),
    path("partners", views.PartnerListView.as_view(), name="partner-list"),
]
