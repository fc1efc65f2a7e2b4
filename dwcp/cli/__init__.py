"""The `dwcp` command line."""
