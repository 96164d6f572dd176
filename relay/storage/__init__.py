"""Where state and events go: SQLite, the JSON-lines event log, webhooks."""
