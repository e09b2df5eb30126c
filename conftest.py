# Plugins must be named in the rootdir conftest for pytest to load them.
pytest_plugins = ["tests.tryton_plugin"]
