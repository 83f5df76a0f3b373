"""plgg-fl: federated stepwise transfer learning for pediatric low-grade glioma segmentation.

Data flows one way through the package:

- :mod:`plgg_fl.data`     manifests, importers (BraTS, nnU-Net raw, NIfTI pairs), validation
- :mod:`plgg_fl.synth`    the embedded synthetic multi-site cohort (brats, cbtn, dfci_bch)
- :mod:`plgg_fl.engine`   framework-free train / evaluate / infer loops (PyTorch + MONAI)
- :mod:`plgg_fl.fl`       the NVFlare side: client script, server pieces, job recipes
- :mod:`plgg_fl.pipeline` stage 1 -> 2 -> 3 -> evaluation in the NVFlare simulator
"""

__version__ = "0.1.0"
