"""jaxinterp: sparse autoencoders and probes on transformer activations, in JAX.

Stages (one package each): ``extract`` (source model → activation store), ``store``,
``buffer`` (shuffled sharded batches), ``sae`` (architectures as pure functions), ``train``,
``eval``, ``export``. The ``jaxinterp`` command (``cli``) wires them to Python config files.
"""

__version__ = "0.1.0"
