"""riskstream inference stage."""
