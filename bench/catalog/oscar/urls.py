from django.urls import include, path

from bench.catalog.oscar.views import ProductList

urlpatterns = [
    # oscar-api's product list, with the two filters a shop adds to it (views.py).
    path("api/products/", ProductList.as_view(), name="bench-product-list"),
    path("api/", include("oscarapi.urls")),
]
