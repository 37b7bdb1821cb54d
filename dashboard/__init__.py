"""riskstream dashboard stage."""
