"""The platform-neutral conversation service (DESIGN.md, "Layout"): one module per concern."""
