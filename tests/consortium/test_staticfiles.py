"""plotly.js is served from our own static files (hospitals are often offline): one file from the
installed plotly package, and none of the package's other data."""

from django.contrib.staticfiles import finders
from django.templatetags.static import static


def test_it_serves_plotly_js_from_the_installed_package(client):
    response = client.get(static("vendor/plotly/plotly.min.js"))
    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"plotly.js" in body[:500] and len(body) > 1_000_000


def test_it_publishes_only_plotly_js_from_the_package():
    published = [path for finder in finders.get_finders() for path, storage in finder.list([])
                 if getattr(storage, "prefix", None) == "vendor/plotly"]
    assert published == ["plotly.min.js"]
    assert finders.find("vendor/plotly/widgetbundle.js") is None
