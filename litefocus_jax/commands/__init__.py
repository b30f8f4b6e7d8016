"""The `litefocus-jax` command line: argument parsing and exit codes over the tools and pipelines."""
