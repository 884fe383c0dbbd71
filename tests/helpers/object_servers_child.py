"""Start fake-gcs-server and Azurite as the test fixtures do, print their pids, then wait to be killed."""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.object_servers import running_azure_server, running_gcs_server  # noqa: E402

with running_gcs_server() as gcs, running_azure_server() as azure:
    print(json.dumps([gcs.pid, azure.pid]), flush=True)
    time.sleep(600)
