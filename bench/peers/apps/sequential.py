"""``python sequential.py LIB N``: N calls of LIB's blocking enqueue, one after another, each timed.

``LIB`` is ``dramatiq`` (``noop.send()``), ``reliq`` (``Client.enqueue``) or ``reliq-task``
(the handler's own ``noop.enqueue()``). Prints ``{"seconds", "p50_us", "p99_us",
"cpu_us", "version"}`` (``cpu_us``: the producer process's own CPU a call, which a busy
machine inflates far less than the wall-clock figures); run by bench/sync_client.py in LIB's own venv.
"""

import importlib
import importlib.metadata
import json
import statistics
import sys
import time


def main() -> None:
    lib, n = sys.argv[1], int(sys.argv[2])
    app = importlib.import_module(f"{lib.split('-')[0]}_app")
    send = app.sender(lib)
    send()  # connect, load the script: not part of the figure
    times = [0.0] * n
    clock = time.perf_counter
    started, cpu = clock(), time.process_time()
    for i in range(n):
        t = clock()
        send()
        times[i] = clock() - t
    seconds, cpu = clock() - started, time.process_time() - cpu
    cuts = statistics.quantiles(times, n=100)
    print(json.dumps({"seconds": seconds, "p50_us": cuts[49] * 1e6, "p99_us": cuts[98] * 1e6,
                      "cpu_us": cpu / n * 1e6,
                      "version": importlib.metadata.version(lib.split("-")[0])}))


if __name__ == "__main__":
    main()
