"""tests/test_hostile_resources.py's attacks against a kernel on a test node (issue 13):
the same test bodies, their kernels on the node (tests/node_suites.py says how), runc,
the argv launcher (through the resident helper). test_writing_into_the_socket_dir_stops_
the_kernel_at_once (A18, five cases) runs against the node's socket-dir guard
(_node_guard.py), its host side reading the kernel's dir on the node through the node's
mount namespace (tests/node_suites.py).

Not run here, and why:
- test_socket_replaced_by_a_symlink_is_refused_and_its_target_never_reached (F09): on a
  node the swap does not break the heartbeat (the forward goes to the hard link pinned
  when the kernel bound its sockets: a safe outcome the runc branch does not expect), and
  the bait, a socket of this host, is out of the node's reach anyway; the node's own
  version is test_a_socket_swapped_for_a_symlink_on_the_node_... in test_node_kernels.py.
"""

from __future__ import annotations

import pytest

from tests.node_suites import *  # noqa: F403  # the fixtures that put the suite on a node
from tests.test_hostile_resources import *  # noqa: F403  # its tests and module fixtures

# The local suite's rerun policy (timing-sensitive attacks on a shared machine) holds on a
# node too: its module-level mark is not imported with its tests.
pytestmark = [
    pytest.mark.nodes,
    pytest.mark.docker,
    pytest.mark.flaky(reruns=2, reruns_delay=2),
]

#: Not applicable on a node (the module docstring says why): not collected here.
NOT_ON_A_NODE = ("test_socket_replaced_by_a_symlink_is_refused_and_its_target_never_reached",)
for _name in NOT_ON_A_NODE:
    del globals()[_name]
