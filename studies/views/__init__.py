"""HTML views of studies: pages (`pages`), their buttons (`actions`) and the site admin's pages (`sites`)."""
