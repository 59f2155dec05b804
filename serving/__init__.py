"""`saferoute serve`: the SafeRoute model behind an HTTP moderation endpoint, with dynamic batching."""
