"""Benchmarks of ``gpukb.rnn`` (and of saved Keras models run by ``gpukb.keras``) against the
libraries a user would pick instead (``gpukb bench``).

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
- ``command``: the ``gpukb bench`` arguments, their validation, and the run;
- ``worker``: the process that runs one implementation and reports to the parent.
- ``grid``: ``gpukb bench --grid``, every workload and dtype over batch sizes x units, one worker
  per implementation, the machine's GEMM peak; ``heatmap``: its Markdown and PNG heat maps
  (``python -m gpukb.bench.heatmap grid.json`` redraws a saved run).
- ``cuda``: the cuda backend's cell paths against PyTorch's cuDNN LSTM/GRU, on a GPU
  (``python -m gpukb.bench.cuda``; a command of its own, not part of ``gpukb bench``).

``gpukb bench --model PATH`` times a saved Keras model instead, with its own three modules:

- ``models``: the inputs made from the model's input shapes, gpukb's reference outputs, the
  output check (a peer that disagrees is "wrong"), and the result rows;
- ``model_peers``: gpukb.keras on each backend, Keras 3 on each of its backends (jax, torch,
  numpy, tensorflow), tf.keras; each loads the same file;
- ``model_command``: the run's validation (model, time steps, batch sizes) and the run.

Importing this package imports nothing heavy; the peers' libraries load when a run needs them.
"""
