"""riskstream alerts stage."""
