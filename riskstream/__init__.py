"""riskstream: streaming risk analytics over financial news and customer-service text."""

__version__ = "0.1.0"
