"""The builtin backends; each registers through the same hooks a third-party plugin uses."""
