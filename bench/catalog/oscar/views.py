"""django-oscar-api's product list with the two filters the bench pages need, written as a
shop using oscar would add them: oscar-api's list takes only `structure`.

- `q`: every word in the title, the description or the UPC (icontains), as oscar's dashboard
  searches products and haystack's simple backend searches text; oscar's full-text search
  needs a search engine (Solr, Elasticsearch) the bench does not run.
- `category`: the category with that slug and every one below it, through its products, as
  oscar's own category page filters (`get_descendants_and_self()`, `distinct()`).
"""

from django.db.models import Q
from oscar.core.loading import get_model
from oscarapi.views.product import ProductList as OscarProductList

Category = get_model("catalogue", "Category")


class ProductList(OscarProductList):
    def get_queryset(self):
        queryset = super().get_queryset()
        for word in self.request.query_params.get("q", "").split()[:8]:
            queryset = queryset.filter(
                Q(title__icontains=word) | Q(description__icontains=word) | Q(upc__icontains=word)
            )
        slug = self.request.query_params.get("category")
        if slug:
            category = Category.objects.filter(slug=slug).first()
            if category is None:
                return queryset.none()
            queryset = queryset.filter(
                categories__in=category.get_descendants_and_self()
            ).distinct()
        return queryset
