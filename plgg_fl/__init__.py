"""plgg-fl: federated stepwise transfer learning for pediatric low-grade glioma segmentation.

Data flows one way through the package:

- :mod:`plgg_fl.data`     manifests, importers (BraTS, nnU-Net raw, NIfTI pairs), validation
- :mod:`plgg_fl.synth`    the embedded synthetic multi-site cohort (brats, cbtn, dfci_bch)
- :mod:`plgg_fl.engine`   framework-free train / evaluate / infer loops (PyTorch + MONAI)
- :mod:`plgg_fl.fl`       the NVFlare side: client script, server pieces, job recipes
- :mod:`plgg_fl.pipeline` stage 1 -> 2 -> 3 -> evaluation in the NVFlare simulator; job folders
- :mod:`plgg_fl.predict`  clinical inference (NIfTI / DICOM in, masks on the scan's grid out) and export
- :mod:`plgg_fl.deploy`   provisioning, a real federation, FLARE API submission, site policies
- :mod:`plgg_fl.report`   the run report and the multi-seed study report
- :mod:`plgg_fl.review`   the blinded clinical review kit

``plgg_fl.bundled`` finds the shipped configs and site templates; ``plgg_fl.errors`` and
``plgg_fl.cliopts`` are shared by every command. ``tests/test_layers.py`` keeps the order.
"""

__version__ = "0.1.0"
