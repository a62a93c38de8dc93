"""``python enqueue.py LIB N CONCURRENCY``: enqueue N no-ops with LIB's own client.

Prints ``{"seconds": ..., "version": ...}``; run by run.py in LIB's own venv.
"""

import asyncio
import importlib
import importlib.metadata
import inspect
import json
import sys
import time


def main() -> None:
    lib, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    app = importlib.import_module(f"{lib}_app")
    started = time.perf_counter()
    if inspect.iscoroutinefunction(app.enqueue):
        asyncio.run(app.enqueue(n, concurrency))
    else:
        app.enqueue(n, concurrency)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "version": importlib.metadata.version(lib)}))


if __name__ == "__main__":
    main()
