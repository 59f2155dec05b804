"""The `saferoute` command line: one entry point for every stage, the recipe parser, the quickstart,
and the recipes and Accelerate configs they read."""
