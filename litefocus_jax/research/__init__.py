"""Research tools: attention-pattern analysis and LiteFocus-aware fine-tuning."""
