"""The Gradio Space of a SafeRoute model (`saferoute demo`)."""
