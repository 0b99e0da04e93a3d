"""Imported last by the fork server, after every preloaded module: moves everything the
server imported into Python's permanent GC generation (``gc.freeze()``).

A forked run shares the server's memory copy-on-write. Without the freeze, the run's
first full garbage collection walks every object the server imported (Prefect, JAX,
Keras, matplotlib, pandas...), writing to each object's GC header and so copying nearly
every page of the parent: measured in a backtest run, 0.27 s of its equity chart was such
collections. Frozen objects are never collected, which is right for modules imported for
the life of the server; a run's own objects are collected as usual.
"""

from __future__ import annotations

import gc

gc.collect()
gc.freeze()
