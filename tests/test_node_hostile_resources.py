"""tests/test_hostile_resources.py's attacks against a kernel on a test node (issue 13):
the same test bodies, their kernels on the node (tests/node_suites.py says how), runc only.

Not run here, and why:
(filled in from the run)
"""

from __future__ import annotations

import pytest

from tests.node_suites import *  # noqa: F403  # the fixtures that put the suite on a node
from tests.test_hostile_resources import *  # noqa: F403  # its tests and module fixtures

pytestmark = [pytest.mark.nodes, pytest.mark.docker]
