"""The site agent: the Django-free program a hospital runs next to its data (`python -m sites.agent --help`).

It polls the coordinator for open rounds, trains the study's model locally on the site's CSV and sends back
only weights, counts and metrics, never data rows. The HTTP contract is docs/agent-protocol.md.
"""
