"""The pages that span the consortium: they may import every app, and no app imports them.

`home` (what each user has to do), `overview` (every visible study at a glance), `sites` (a site's page:
participations, agent tokens, round activity) and `errors` (Django's 400/404/500 answers, JSON under /api/).
"""
