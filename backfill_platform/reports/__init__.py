"""Reports on destination_data from Dagster's own run and event storage: ``history`` (coverage,
attempts, retry analytics), ``plan`` (dry run of a backfill), ``render`` (table / json / csv),
``heatmap`` (``status --png``) and ``export_log`` (``status --export-log``)."""
