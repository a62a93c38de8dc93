"""An ``--app`` module that takes long to import (as real ones do), and says when it begins."""

import os
import time
from pathlib import Path

Path(os.environ["RELIQ_TEST_IMPORTING"]).touch()
time.sleep(5)
