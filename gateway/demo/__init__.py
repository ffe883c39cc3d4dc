"""The demo: a synthetic campus seeded through the real services, and the demo launcher."""
