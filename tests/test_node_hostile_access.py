"""tests/test_hostile_access.py's attacks against a kernel on a test node (issue 13): the
same test bodies, their kernels on the node (tests/node_suites.py says how), runc, the
argv launcher (through the resident helper), mounted work dirs below a declared shared
path and --copy-workdir copies as the suite's own fixtures ask.

Run with the node's view (tests/node_suites.py): test_b06_a_kernel_sees_only_its_own_
socket_dir plants its marks in the kernels' socket dirs on the node (through the node's
mount namespace, as root here; the node's socket-dir guard lets a link at a socket's name
be, as this host's does); test_c10_a_replaced_kernel_socket_does_not_redirect_the_relay
expects no "is not a socket" line there: the relay connects to forwards of the inodes
pinned when the kernel bound its sockets, never to what it puts at their names.

Runs, but weaker on a node: test_c12_a_deep_tree_in_the_copy_does_not_stop_the_launchers_
cleanup checks the launcher's exit code; its "runtime dir removed" half looks at this
host's filesystem, where the node's dir never is (test_kernel_on_a_node_runs_code_... asks
the node that a kernel's dir is gone after its shutdown).
"""

from __future__ import annotations

import pytest

from tests.node_suites import *  # noqa: F403  # the fixtures that put the suite on a node
from tests.test_hostile_access import *  # noqa: F403  # its tests and module fixtures

pytestmark = [pytest.mark.nodes, pytest.mark.docker]
