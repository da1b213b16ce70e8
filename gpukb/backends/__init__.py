"""The built-in backends, registered through gpukb's own entry points like any plugin."""
