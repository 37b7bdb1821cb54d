"""riskstream launcher stage."""
