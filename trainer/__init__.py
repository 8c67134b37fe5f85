"""The trainer side of flobc."""
