"""Small shared helpers with no model knowledge: crash-safe file output, command-line value types."""
