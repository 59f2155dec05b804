"""Training, evaluation, packaging and the `saferoute` command line."""
