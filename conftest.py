# Collected by pytest from the repository root: keep the module that runs the CLI on import out of
# doctest collection.
collect_ignore = ["fastconv/__main__.py"]
