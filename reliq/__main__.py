"""``python -m reliq``."""

from reliq.entry import main

main()
