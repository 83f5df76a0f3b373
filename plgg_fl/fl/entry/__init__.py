"""The script NVFlare copies into every job (``custom/client.py``): a thin entry point that runs the
site's installed plgg-fl client, so a site runs the code of the package version it installed."""
