"""riskstream finetune stage."""
