"""Development tools: the Databricks workspace emulator."""
