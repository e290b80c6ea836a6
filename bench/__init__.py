"""resnet_ln's benchmarks (`python -m bench.NAME`); the figures are in bench/RESULTS.md."""

from resnet_ln import xla_defaults

# As the package's own commands do (resnet_ln.cli), before JAX starts its backends.
xla_defaults.set_cpu_defaults()
