"""Reference: the handler of ref_lpush.py with no Redis call at all (the HTTP ceiling).

``python bench/ref_noredis.py --port P``
"""

from ref_lpush import main

if __name__ == "__main__":
    main(use_redis=False)
