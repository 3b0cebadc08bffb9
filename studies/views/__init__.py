"""HTML views of studies: pages (`pages`), their buttons (`actions`) and the studies part of a site's page
(`site_participations`)."""
