"""Packaged YAML configuration files; locate them with `yolodistill.paths.cfg_path(name)`."""
