"""Small resources shipped with ingest: the company list, the name gazetteer, the labeled PII set."""
