"""pyganx's built-in GAN variants, installed as the import package ``pyganx_plugins``.

They are registered through the ``pyganx.gans`` entry-point group exactly like
third-party plugins (pyproject.toml; docs/plugins.md).
"""
