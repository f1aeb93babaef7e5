"""NASLung: latency-aware 3D CNN architecture search for pulmonary-nodule malignancy.

The library is split the way the pipeline runs: ``data`` (CT to labelled crops), ``models``
(residual CBAM networks and margin heads), ``train``, ``ensemble`` and ``explain``.
"""

__version__ = "0.1.0"
