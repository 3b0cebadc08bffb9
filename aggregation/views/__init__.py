"""Pages of the aggregation app: rounds and model versions, and the live study dashboard. The consortium
overview and the site page span apps: they are in `consortium.pages`."""
