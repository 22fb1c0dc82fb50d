"""Activations on disk (zarr v3) and per-unit fits from them with Dask.

`ActivationStore` (`mechprobe.store.zarr_store`) holds one ``[window, unit]`` array per family and
layer, written window block by window block, with each block's streaming score-test state and a
done flag (a killed collection resumes where it stopped); `fit_store` (`mechprobe.store.fit`)
fits every unit from it, mapped over unit blocks on Dask's local scheduler or a dask.distributed
cluster. Running the model into a store is `mechprobe.collect_store`. zarr and dask are imported
only when a store is used.

Example:
    >>> from mechprobe.store import ActivationStore, fit_store
    >>> ActivationStore.__name__, fit_store.__name__
    ('ActivationStore', 'fit_store')
"""

from mechprobe.store.fit import connect, fit_store
from mechprobe.store.zarr_store import ActivationStore

__all__ = ["ActivationStore", "connect", "fit_store"]
