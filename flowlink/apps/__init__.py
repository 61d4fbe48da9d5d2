"""Apps: a workspace published as immutable versions and installed into workspaces as
instances, each with its own config (validated against the app's ``config.schema``)."""
