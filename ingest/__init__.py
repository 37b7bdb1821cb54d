"""riskstream ingest stage."""
