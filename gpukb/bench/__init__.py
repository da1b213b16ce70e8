"""Benchmarks of ``gpukb.rnn`` against the libraries a user would pick instead (``gpukb bench``).

One job per module:

- ``workloads``: the sizes, the random Keras-layout weights, the FLOP counts and the float64 NumPy
  reference every implementation is checked against;
- ``peers``: adapters for the peers (PyTorch ``nn.LSTM``/``nn.GRU``, JAX ``lax.scan``, Keras 3,
  tf.keras, onnxruntime), each optional: a missing one is *skipped* with the reason; and the one
  command that installs them (``INSTALL_PEERS``);
- ``implementations``: the gpukb backends as benchmark entries (by default every one with kernels
  of its own; plugins that only run the generic loop when named);
- ``runner``: timing (warm-up/compile outside the timed region, median of repeats, a time budget)
  and the progress bar;
- ``report``: the table, the JSON document (with machine information) and the plot;
- ``command``: the ``gpukb bench`` arguments, their validation, and the run.

Importing this package imports nothing heavy; the peers' libraries load when a run needs them.
"""
