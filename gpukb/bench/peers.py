"""The peers: what a user would run instead of gpukb, each optional.

Each runs the three workloads (LSTM, GRU, SimpleRNN), in float32 or float64. A peer that has no
float64 kernel for a workload says so (``unsupported``: the row reads "n/a" with the reason); no
peer is ever run in another type than the one asked for.

- ``torch``: ``torch.nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (tanh) under ``torch.inference_mode()``,
  float64 as ``module.double()``, on the CPU with
  ``torch.set_num_threads(os.cpu_count())``; a second entry on the GPU when
  ``torch.cuda.is_available()`` (synchronised with ``torch.cuda.synchronize()``).
- ``jax``: the cell written with ``jax.numpy`` and iterated by ``jax.lax.scan`` under ``jax.jit``,
  on JAX's default device; XLA's CPU thread pool uses every core by default. float64 turns on
  ``jax_enable_x64`` (without it JAX would compute float64 inputs in float32).
- ``keras3``: ``keras.layers.LSTM`` / ``GRU`` / ``SimpleRNN`` (Keras 3; float64 as the layer's
  ``dtype``, except where Keras computes float64 in float32: see ``Keras3Peer.unsupported``)
  called on NumPy arrays; the backend is
  ``KERAS_BACKEND`` (``numpy`` when unset, since that is what a NumPy user gets without another
  framework); the NumPy backend computes with NumPy's BLAS threads.
- ``tf.keras``: ``tf_keras.layers.LSTM`` / ``GRU`` (Keras 2, ``pip install tf_keras``) inside a
  ``tf.function``; TensorFlow's default thread pools (every core).
- ``onnxruntime``: a one-node ONNX model (the ``LSTM`` / ``GRU`` / ``RNN`` operator, the weights
  stored in it) run by an ``onnxruntime.InferenceSession`` on the CPU, with ``SessionOptions``
  defaults (graph optimisations on) except ``intra_op_num_threads = os.cpu_count()``; the input
  is fed time-major, as the operator wants it (transposed once, outside the timed call). Its
  CPU kernels of these operators are float32 only (1.32: "LSTM operator does not support double
  yet", no RNN kernel for double): whether float64 runs is asked of the installed onnxruntime
  with a one-step model (``OnnxRuntimePeer.unsupported``).

A peer whose library is missing (or fails to import) raises ``Skipped`` from ``prepare``: it is
listed as skipped, never an error. Weights are the same Keras-layout arrays for every peer; the
torch adapters reorder the gates (torch LSTM i, f, g, o = Keras i, f, c, o; torch GRU r, z, n =
Keras z, r, h, with Keras' ``reset_after=True`` being torch's formulation), and so does the ONNX
one (see ``onnx_weights``).
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from .implementations import Implementation, Runnable, Skipped


def _import(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        raise Skipped(f"{missing} is not installed ({install})") from None
    except Exception as error:  # a broken install is skipped too, with what went wrong
        raise Skipped(f"importing {module} failed: {type(error).__name__}: {error}") from None


def blas_threads() -> str:
    """NumPy's BLAS thread count, when threadpoolctl can tell."""
    try:
        from threadpoolctl import threadpool_info

        counts = {f"{i.get('internal_api')} {i.get('num_threads')}" for i in threadpool_info()
                  if i.get("user_api") == "blas"}
        if counts:
            return "NumPy BLAS: " + ", ".join(sorted(counts)) + " thread(s)"
    except Exception:
        pass
    return f"NumPy BLAS default (usually all {os.cpu_count()} cores)"


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------

class TorchPeer(Implementation):
    def __init__(self, device: str = "cpu"):
        super().__init__(key="torch" if device == "cpu" else f"torch[{device}]")
        self.device = device

    def label(self, workload):
        layer = {"lstm": "nn.LSTM", "gru": "nn.GRU", "simple_rnn": "nn.RNN"}[workload]
        return f"torch {layer}" + ("" if self.device == "cpu" else f" ({self.device})")

    def prepare(self):
        torch = _import("torch", "pip install torch")
        self.torch = torch
        self.versions = {"torch": torch.__version__}
        if self.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
            self.threads = (f"{torch.get_num_threads()} (torch.set_num_threads(os.cpu_count()))")
        else:
            if not torch.cuda.is_available():
                raise Skipped("torch.cuda.is_available() is False")
            self.threads = f"GPU ({torch.cuda.get_device_name()})"

    def build(self, problem):
        torch = self.torch
        W, U, b = problem.weights
        D, H = problem.size.D, problem.size.H
        if problem.workload == "lstm":
            module = torch.nn.LSTM(D, H, batch_first=True)
            w_ih, w_hh, b_ih, b_hh = W.T, U.T, b, np.zeros_like(b)
        elif problem.workload == "simple_rnn":
            module = torch.nn.RNN(D, H, nonlinearity="tanh", batch_first=True)
            w_ih, w_hh, b_ih, b_hh = W.T, U.T, b, np.zeros_like(b)
        else:  # Keras z, r, h -> torch r, z, n
            module = torch.nn.GRU(D, H, batch_first=True)

            def order(a):
                return np.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:]], axis=-1)

            w_ih, w_hh, b_ih, b_hh = order(W).T, order(U).T, order(b[0]), order(b[1])
        dev = torch.device(self.device)
        module = module.to(device=dev, dtype=getattr(torch, problem.dtype)).eval()
        with torch.no_grad():
            for param, value in ((module.weight_ih_l0, w_ih), (module.weight_hh_l0, w_hh),
                                 (module.bias_ih_l0, b_ih), (module.bias_hh_l0, b_hh)):
                param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        x = torch.from_numpy(problem.x).to(dev)
        states = tuple(torch.from_numpy(s)[None].to(dev) for s in problem.states)
        hidden = states if problem.workload == "lstm" else states[0]
        sync = torch.cuda.synchronize if self.device != "cpu" else (lambda: None)

        def run():
            with torch.inference_mode():
                outputs = module(x, hidden)[0]
            sync()
            return outputs

        return Runnable(run, lambda out: out.detach().cpu().numpy())


# --------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------

class JaxPeer(Implementation):
    def __init__(self):
        super().__init__(key="jax")

    def label(self, workload):
        return f"jax lax.scan ({self.platform})" if hasattr(self, "platform") else "jax lax.scan"

    def prepare(self):
        jax = _import("jax", "pip install jax")
        self.jax = jax
        self.jnp = importlib.import_module("jax.numpy")
        try:
            self.platform = jax.default_backend()
        except Exception as error:
            raise Skipped(f"JAX has no usable device: {type(error).__name__}: {error}") from None
        self.versions = {"jax": jax.__version__}
        try:
            import jaxlib

            self.versions["jaxlib"] = jaxlib.__version__
        except Exception:
            pass
        self.threads = ("GPU" if self.platform != "cpu"
                        else f"XLA CPU thread pool (default: all {os.cpu_count()} cores)")
        self._compiled = {"lstm": jax.jit(self._forward_lstm), "gru": jax.jit(self._forward_gru),
                          "simple_rnn": jax.jit(self._forward_simple_rnn)}

    def _forward_lstm(self, x, W, U, b, h0, c0):
        jax, jnp = self.jax, self.jnp
        H = h0.shape[1]
        xw = jnp.einsum("btd,dk->tbk", x, W) + b

        def step(carry, xt):
            h, c = carry
            z = xt + h @ U
            i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
            g, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), h

        _, hs = jax.lax.scan(step, (h0, c0), xw)
        return jnp.swapaxes(hs, 0, 1)

    def _forward_gru(self, x, W, U, b, h0):
        jax, jnp = self.jax, self.jnp
        H = h0.shape[1]
        xw = jnp.einsum("btd,dk->tbk", x, W) + b[0]

        def step(h, mx):
            mh = h @ U + b[1]
            z = jax.nn.sigmoid(mx[:, :H] + mh[:, :H])
            r = jax.nn.sigmoid(mx[:, H:2 * H] + mh[:, H:2 * H])
            hh = jnp.tanh(mx[:, 2 * H:] + r * mh[:, 2 * H:])
            h = z * h + (1.0 - z) * hh
            return h, h

        _, hs = jax.lax.scan(step, h0, xw)
        return jnp.swapaxes(hs, 0, 1)

    def _forward_simple_rnn(self, x, W, U, b, h0):
        jax, jnp = self.jax, self.jnp
        xw = jnp.einsum("btd,dk->tbk", x, W) + b

        def step(h, xt):
            h = jnp.tanh(xt + h @ U)
            return h, h

        _, hs = jax.lax.scan(step, h0, xw)
        return jnp.swapaxes(hs, 0, 1)

    def build(self, problem):
        jnp = self.jnp
        if problem.dtype == "float64":  # float32 problems keep float32 arrays either way
            self.jax.config.update("jax_enable_x64", True)
        f = self._compiled[problem.workload]
        args = [jnp.asarray(a) for a in (problem.x, *problem.weights, *problem.states)]
        if args[0].dtype != problem.x.dtype:
            raise TypeError(f"JAX turned {problem.dtype} inputs into {args[0].dtype}.")

        def run():
            return f(*args).block_until_ready()

        return Runnable(run, np.asarray)


# --------------------------------------------------------------------------------------------
# Keras 3 and tf.keras
# --------------------------------------------------------------------------------------------

#: The Keras layer of each workload.
KERAS_LAYERS = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}


def _keras_layer(layers, problem, time_steps=None):
    H, dtype = problem.size.H, problem.dtype  # the layer's dtype: its weights and its compute
    if problem.workload == "lstm":
        return layers.LSTM(H, return_sequences=True, dtype=dtype)
    if problem.workload == "simple_rnn":
        return layers.SimpleRNN(H, return_sequences=True, dtype=dtype)
    return layers.GRU(H, return_sequences=True, reset_after=True, dtype=dtype)


class Keras3Peer(Implementation):
    def __init__(self):
        super().__init__(key="keras3")

    def label(self, workload):
        layer = KERAS_LAYERS[workload]
        backend = getattr(self, "backend_name", "?")
        return f"keras3 {layer} ({backend})"

    def prepare(self):
        os.environ.setdefault("KERAS_BACKEND", "numpy")
        keras = _import("keras", "pip install keras")
        version = getattr(keras, "__version__", "0")
        if not version.startswith("3"):
            raise Skipped(f"keras {version} is installed, not Keras 3")
        self.keras = keras
        self.backend_name = keras.backend.backend()
        self.versions = {"keras": version}
        self.threads = (blas_threads() if self.backend_name == "numpy"
                        else f"the {self.backend_name} backend's default")

    def unsupported(self, workload, dtype):
        """Keras 3 promotes types as JAX does without x64: on every backend but tensorflow,
        ``keras.backend.result_type("float64", "float64")`` is float32 (3.15), so a float64
        layer's products and activations run in float32 (measured: 1e-7 relative error)."""
        promoted = self.keras.backend.result_type(dtype, dtype)
        if promoted != dtype:
            return (f"float32 only: Keras {self.keras.__version__} on the {self.backend_name} "
                    f"backend computes {dtype} in {promoted} "
                    f"(keras.backend.result_type('{dtype}', '{dtype}') == '{promoted}')")
        return None

    def build(self, problem):
        keras = self.keras
        layer = _keras_layer(keras.layers, problem)
        x = problem.x
        layer.build(x.shape)
        layer.set_weights(list(problem.weights))
        convert = keras.ops.convert_to_numpy

        def run():
            return convert(layer(x))  # NumPy in, NumPy out: the conversion is part of the call

        return Runnable(run, np.asarray)


class TfKerasPeer(Implementation):
    def __init__(self):
        super().__init__(key="tf.keras")

    def label(self, workload):
        return f"tf.keras {KERAS_LAYERS[workload]} (tf.function)"

    def prepare(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        tf = _import("tensorflow", "pip install tensorflow tf_keras")
        try:
            tfk = importlib.import_module("tf_keras")
        except ImportError:
            keras_version = getattr(getattr(tf, "keras", None), "__version__", "")
            if not keras_version.startswith("2"):
                raise Skipped("tf_keras is not installed (pip install tf_keras)") from None
            tfk = tf.keras
        except Exception as error:
            raise Skipped(f"importing tf_keras failed: {type(error).__name__}: {error}") from None
        self.tf, self.tfk = tf, tfk
        self.versions = {"tensorflow": tf.__version__,
                         "tf_keras": getattr(tfk, "__version__", "unknown")}
        self.threads = f"TensorFlow default thread pools (all {os.cpu_count()} cores)"

    def build(self, problem):
        tf = self.tf
        layer = _keras_layer(self.tfk.layers, problem)
        layer.build((None,) + problem.x.shape[1:])
        layer.set_weights(list(problem.weights))
        call = tf.function(lambda xx: layer(xx))
        x = tf.constant(problem.x)

        def run():
            return call(x).numpy()

        return Runnable(run, np.asarray)


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------

#: Where each ONNX gate block comes from in the Keras layout: ONNX LSTM is i, o, f, c and Keras
#: i, f, c, o; ONNX GRU and Keras are both z, r, h; RNN has one block.
ONNX_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (0, 1, 2), "simple_rnn": (0,)}
#: The ONNX operator of each workload (RNN's default activation is Tanh, as SimpleRNN's).
ONNX_OPERATORS = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}
#: opset 17 and IR version 8: readable by every onnxruntime the ``peers`` extra allows (>= 1.17).
ONNX_OPSET, ONNX_IR_VERSION = 17, 8


def onnx_weights(problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The problem's Keras-layout weights as the ONNX operator takes them: W ``[1, gates*H, D]``,
    R ``[1, gates*H, H]`` (the Keras kernels transposed, gate blocks reordered) and B
    ``[1, 2*gates*H]`` = input biases ++ recurrent biases. Keras LSTM and SimpleRNN have one bias
    (the recurrent one is zero); Keras GRU with ``reset_after=True`` has both, its (2, 3H) rows."""
    W, U, b = problem.weights
    H = problem.size.H
    order = ONNX_GATE_ORDER[problem.workload]

    def reorder(a):  # the gate blocks lie along the last axis
        return np.concatenate([a[..., g * H:(g + 1) * H] for g in order], axis=-1)

    if problem.workload == "gru":
        biases = (reorder(b[0]), reorder(b[1]))
    else:
        biases = (reorder(b), np.zeros_like(b))
    return reorder(W).T[None], reorder(U).T[None], np.concatenate(biases)[None]


def onnx_model(onnx, problem):
    """A checked one-node ONNX model: inputs X ``[T, B, D]`` and the initial states
    ``[1, B, H]``, output Y ``[T, 1, B, H]``; the weights are initializers, as in a served model."""
    from onnx import helper, numpy_helper

    B, T, D, H = problem.size.B, problem.size.T, problem.size.D, problem.size.H
    elem = helper.np_dtype_to_tensor_dtype(problem.x.dtype)
    states = ["initial_h", "initial_c"] if problem.workload == "lstm" else ["initial_h"]
    attributes = {"hidden_size": H}
    if problem.workload == "gru":
        attributes["linear_before_reset"] = 1  # Keras reset_after=True
    node = helper.make_node(ONNX_OPERATORS[problem.workload], ["X", "W", "R", "B", "", *states],
                            ["Y"], **attributes)
    inputs = [helper.make_tensor_value_info("X", elem, [T, B, D])]
    inputs += [helper.make_tensor_value_info(name, elem, [1, B, H]) for name in states]
    weights = [numpy_helper.from_array(np.ascontiguousarray(a, problem.x.dtype), name)
               for name, a in zip("WRB", onnx_weights(problem))]
    graph = helper.make_graph([node], f"keras_{problem.workload}", inputs,
                              [helper.make_tensor_value_info("Y", elem, [T, 1, B, H])],
                              initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


#: How onnxruntime 1.32 says a kernel lacks a type: "LSTM operator does not support double yet"
#: (LSTM, GRU: when run), "Could not find an implementation for RNN(14) node" (RNN: when loaded).
MISSING_KERNEL = ("does not support double", "Could not find an implementation")


class OnnxRuntimePeer(Implementation):
    def __init__(self):
        super().__init__(key="onnxruntime")

    def label(self, workload):
        return f"onnxruntime {ONNX_OPERATORS[workload]}"

    def prepare(self):
        install = "pip install onnx onnxruntime"
        ort = _import("onnxruntime", install)
        onnx = _import("onnx", install)
        self.ort, self.onnx = ort, onnx
        self.versions = {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
        self.intra_op_threads = os.cpu_count() or 1
        self.threads = (f"{self.intra_op_threads} intra-op "
                        "(SessionOptions.intra_op_num_threads = os.cpu_count())")
        self._unsupported = {}  # (workload, dtype) -> the reason, or None

    def unsupported(self, workload, dtype):
        """Asks the installed onnxruntime: a one-step model of ``workload`` in ``dtype`` that
        fails to load or run means its CPU kernel lacks the type (float64, up to 1.32 at least)."""
        if dtype == "float32":
            return None
        if (workload, dtype) not in self._unsupported:
            from .workloads import Size, make_problem

            problem = make_problem(workload, Size(1, 1, 1, 1), dtype=np.dtype(dtype))
            try:
                runnable = self.build(problem, quiet=True)
                runnable.run()
            except Exception as error:  # noqa: BLE001 - its message is the reason shown
                message = " ".join(str(error).split())
                if not any(sign in message for sign in MISSING_KERNEL):
                    raise  # another failure: not a missing type, so not "n/a"
                message = message.split("Status Message:")[-1].split("\x1b")[0].strip()
                self._unsupported[workload, dtype] = (
                    f"float32 only: onnxruntime {self.ort.__version__} has no {dtype} CPU "
                    f"kernel for {ONNX_OPERATORS[workload]} ({message[:120]})")
            else:
                self._unsupported[workload, dtype] = None
        return self._unsupported[workload, dtype]

    def build(self, problem, quiet: bool = False):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        if quiet:  # the float64 probe: its expected failure is reported, not logged
            options.log_severity_level = 4
        session = self.ort.InferenceSession(onnx_model(self.onnx, problem).SerializeToString(),
                                            options, providers=["CPUExecutionProvider"])
        feeds = {"X": np.ascontiguousarray(problem.x.transpose(1, 0, 2))}
        for name, state in zip(("initial_h", "initial_c"), problem.states):
            feeds[name] = state[None]

        def run():
            return session.run(["Y"], feeds)[0]

        return Runnable(run, lambda y: y[:, 0].transpose(1, 0, 2))  # [T, 1, B, H] -> (B, T, H)


#: Every peer ``gpukb bench`` knows, by the ``--peers`` name that selects it.
PEER_NAMES = ("torch", "jax", "keras3", "tf.keras", "onnxruntime")
#: What installs the peers (tf.keras aside: TensorFlow is large): the ``peers`` extra of
#: pyproject.toml lists the same packages (tests/test_bench.py checks), and ``gpukb bench`` prints
#: the command when no peer ran. A plain pip command, since gpukb may be installed from a clone.
PEER_PACKAGES = ("torch", "jax", "keras", "onnx", "onnxruntime")
INSTALL_PEERS = "python3 -m pip install " + " ".join(PEER_PACKAGES)


def peer_keys(names=PEER_NAMES) -> list[str]:
    """The implementation keys the ``--peers`` names stand for (``torch``: CPU and CUDA)."""
    return [peer.key for peer in make_peers(names)]


def make_peer(key: str) -> Implementation:
    """A fresh peer from its key (``torch``, ``torch[cuda]``, ``jax``, ``keras3``, ``tf.keras``,
    ``onnxruntime``)."""
    for peer in make_peers():
        if peer.key == key:
            return peer
    raise ValueError(f"unknown peer {key!r}.")


def make_peers(names=PEER_NAMES) -> list[Implementation]:
    """Fresh (unprepared) peer implementations for the given ``--peers`` names."""
    made: list[Implementation] = []
    for name in names:
        if name == "torch":
            made += [TorchPeer("cpu"), TorchPeer("cuda")]
        elif name == "jax":
            made.append(JaxPeer())
        elif name == "keras3":
            made.append(Keras3Peer())
        elif name == "tf.keras":
            made.append(TfKerasPeer())
        elif name == "onnxruntime":
            made.append(OnnxRuntimePeer())
        else:
            raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEER_NAMES)}.")
    return made
