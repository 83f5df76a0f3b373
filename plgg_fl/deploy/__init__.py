"""Real deployment on NVIDIA FLARE: provisioning the study's project, site policies (privacy
filters, resources), starting participants from startup kits, and the FLARE API for the study lead.

- :mod:`plgg_fl.deploy.provision` - ``sites/project.yml`` -> startup kits (host/port set, site policies in).
- :mod:`plgg_fl.deploy.federation` - start/stop server and site clients as local processes (tests, trials).
- :mod:`plgg_fl.deploy.api` - FLARE API: submit, follow, download, chain stages.
- :mod:`plgg_fl.deploy.filters` - the site-enforced result filter named in ``sites/<site>/local/privacy.json``.
- :mod:`plgg_fl.deploy.cli` - ``plgg-fl provision | submit | status | download``.
"""
