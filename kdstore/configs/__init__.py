"""The model and training configs, shipped as package data (no code).

``--config NAME`` finds ``NAME.yaml`` here with :mod:`importlib.resources`
(:func:`kdstore.distill.config.config_dir`); ``_base.yaml`` holds what every model shares and is not
a config on its own. The schema that checks them is :mod:`kdstore.distill.config`.
"""
