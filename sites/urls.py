# The site pages list a site's participations in studies, a studies concept, and sites must not
# import studies; they are routed from consortium/web_urls.py (which spans apps, like the home page).
urlpatterns: list = []
