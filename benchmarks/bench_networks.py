"""Whole networks: every conv layer of ResNet-18 and MobileNetV2 (batch 1, 224x224) in sequence.

A network's layers one after another pay for what single-layer timings hide: switching between
thread pools and algorithms from one layer to the next (see :mod:`fastconv.tools.networks`).
asv runs each benchmark in a process of its own, so torch (a peer) and fastconv do not share pools.
"""

from fastconv.tools.networks import NETWORKS, network_call
from fastconv.tools.cases import Skip

from .common import BACKENDS

#: auto (what a user calls) and every backend, then torch; scipy has no strided convolution.
LIBRARIES = ["auto", *(name for name in BACKENDS if name != "scipy")]


class WholeNetworks:
    """One forward pass's convolutions; achieved time per pass."""

    params = [LIBRARIES, list(NETWORKS)]
    param_names = ["library", "network"]
    timeout = 300

    def setup(self, library, network):
        try:
            self.call = network_call(library, network)
        except Skip as reason:
            raise NotImplementedError(str(reason)) from None
        self.call()  # warm-up: compile kernels, plan transforms, choose backends

    def time_network(self, library, network):
        self.call()
